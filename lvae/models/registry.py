"""A timm-style model registry: ``@register_model`` factories, ``get_model(name)``, ``list_models()``."""
import fnmatch

_entrypoints = {}


def register_model(fn):
    """Register ``fn(pretrained=False, **overrides) -> nn.Module`` under its function name."""
    name = fn.__name__
    if name in _entrypoints:
        raise ValueError(f'model {name!r} is registered twice')
    _entrypoints[name] = fn
    return fn


def list_models(pattern='*'):
    """Sorted names of the registered models matching a shell-style ``pattern``."""
    return sorted(n for n in _entrypoints if fnmatch.fnmatch(n, pattern))


def get_model(name, pretrained=False, **overrides):
    """Build a registered model.

    ``pretrained``: False (random init), True (the registered weights, downloaded through torch's hub cache
    or shipped with the package), or a path / URL of a checkpoint. ``overrides`` replace config fields
    (e.g. ``lmb_range=(16, 1024)``).
    """
    if name not in _entrypoints:
        raise ValueError(f'unknown model {name!r}; known models: {", ".join(list_models())}')
    return _entrypoints[name](pretrained=pretrained, **overrides)
