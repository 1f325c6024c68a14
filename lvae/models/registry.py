"""A timm-style model registry: ``@register_model`` factories, ``get_model(name)``, ``list_models()``."""
import fnmatch

_entrypoints = {}
_pretrained = set()   # models with registered weights (``get_model(name, pretrained=True)``)
_weightless = set()   # models complete without weights (an analytic channel, lvae.sources)


def register_model(fn=None, *, pretrained=False, weightless=False):
    """Register ``fn(pretrained=False, **overrides) -> nn.Module`` under its function name (``@register_model`` or
    ``register_model(fn, pretrained=True)``). ``pretrained``: the model has registered weights; ``weightless``: it
    needs none (its parameters are not learnt)."""
    def register(fn):
        name = fn.__name__
        if name in _entrypoints:
            raise ValueError(f'model {name!r} is registered twice')
        _entrypoints[name] = fn
        if pretrained:
            _pretrained.add(name)
        if weightless:
            _weightless.add(name)
        return fn
    return register(fn) if fn is not None else register


def list_models(pattern='*', pretrained=False):
    """Sorted names of the registered models matching a shell-style ``pattern`` (with registered weights only, when
    ``pretrained``)."""
    return sorted(n for n in _entrypoints if fnmatch.fnmatch(n, pattern) and (not pretrained or n in _pretrained))


def is_weightless(name):
    """Whether model ``name`` needs no weights (an analytic channel)."""
    return name in _weightless


def get_model(name, pretrained=False, **overrides):
    """Build a registered model.

    ``pretrained``: False (random init), True (the registered weights, downloaded through torch's hub cache
    or shipped with the package), or a path / URL of a checkpoint. ``overrides`` replace config fields
    (e.g. ``lmb_range=(16, 1024)``).
    """
    if name not in _entrypoints:
        raise ValueError(f'unknown model {name!r}; known models: {", ".join(list_models())}')
    return _entrypoints[name](pretrained=pretrained, **overrides)
