"""A timm-style model registry: ``@register_model`` factories, ``get_model(name)``, ``list_models()``, and the one
record of which models have weights and where (:func:`pretrained_cfg`).

Who registers: :mod:`lvae.models.rd.zoo` the paper's models, its ablations and the CPU-sized configs;
:func:`lvae.sources.register_source` the optimal channel of each source (``<source>-optimal``, weightless), for
``gaussian-64`` in :mod:`lvae.sources.fields`. ``model_module(name)`` tells which module registered a model.
"""
import fnmatch

_entrypoints = {}
_pretrained = {}      # name -> {'source': URL or file, 'sha256': digest or None}: its registered weights
_weightless = set()   # models complete without weights (an analytic channel, lvae.sources)


def register_model(fn=None, *, pretrained=None, weightless=False):
    """Register ``fn(pretrained=False, **overrides) -> nn.Module`` under its function name (``@register_model`` or
    ``register_model(fn, pretrained={...})``). ``pretrained``: where the model's weights are, ``{'source': URL or
    file path, 'sha256': digest (checked when given)}``; ``weightless``: it needs none (its parameters are not
    learnt)."""
    def register(fn):
        name = fn.__name__
        if name in _entrypoints:
            raise ValueError(f'model {name!r} is registered twice')
        _entrypoints[name] = fn
        if pretrained:
            _pretrained[name] = {'source': pretrained['source'], 'sha256': pretrained.get('sha256')}
        if weightless:
            _weightless.add(name)
        return fn
    return register(fn) if fn is not None else register


def list_models(pattern='*', pretrained=False):
    """Sorted names of the registered models matching a shell-style ``pattern`` (with registered weights only, when
    ``pretrained``)."""
    return sorted(n for n in _entrypoints if fnmatch.fnmatch(n, pattern) and (not pretrained or n in _pretrained))


def pretrained_cfg(name):
    """Where model ``name``'s registered weights are (``{'source', 'sha256'}``), or None when it has none."""
    return dict(_pretrained[name]) if name in _pretrained else None


def model_module(name):
    """The module that registered model ``name``."""
    return _entrypoints[name].__module__


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
