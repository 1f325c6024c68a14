"""Loading a model for evaluation: a registered name, its registered weights, or a checkpoint file / URL, with what
its results are named after and which weights they come from.

>>> from lvae.models import load_model
>>> loaded = load_model('rd_model_small')                    # its registered weights
>>> loaded = load_model(weights='runs/lvae/my_run/last_ema.pt')   # the model the checkpoint records
>>> loaded.model, loaded.name, loaded.weights, loaded.sha256
"""
import os
import warnings
from dataclasses import dataclass

import torch

from lvae.checkpoint import download, is_url, load_file, load_weights, sha256_file
from lvae.models.rd.model import VariableRateLossyVAE
from lvae.models.rd.zoo import CONFIGS, config_difference, parse_model_args, registered_config
from lvae.models.registry import get_model, is_weightless, list_models, pretrained_cfg


@dataclass
class LoadedModel:
    """A model and what its results say of it: ``name`` (the registered model its weights are, or its run's name
    for another config), ``weights`` (a URL as given or a file's name, never a path of this machine, or None),
    ``sha256`` of the weights file (or None), ``untrained`` (random weights)."""
    model: torch.nn.Module
    name: str
    weights: str = None
    sha256: str = None
    untrained: bool = False


def model_from_checkpoint(source, map_location='cpu'):
    """Rebuild a model from a checkpoint that records its ``config`` (a path, URL or a loaded checkpoint); return
    ``(model, checkpoint)``."""
    ckpt = load_file(source, map_location=map_location) if isinstance(source, (str, os.PathLike)) else source
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('config'), dict):
        raise ValueError(f'{source} records no model config; build the model with --model NAME and load the '
                         f'weights into it')
    model = VariableRateLossyVAE.from_config(ckpt['config'])
    load_weights(model, ckpt)
    return model, ckpt


def checkpoint_name(ckpt, path):
    """What results of a checkpoint that records its config are named after: its ``model_name`` when the config is
    that registered model's, or when it is no registered model's name (a name of the user's own); for a registered
    model's config changed by ``--model_args``, its run's name; for a registered name that does not fit the
    weights, the registered model whose config they have (with a warning)."""
    config = registered_config(config=ckpt['config'])
    named = ckpt.get('model_name')
    if named and (named not in CONFIGS or registered_config(named) == config):
        return named
    run = (ckpt.get('args') or {}).get('name') or os.path.splitext(os.path.basename(os.fspath(path)))[0]
    try:
        labelled = named in CONFIGS and registered_config(
            named, parse_model_args((ckpt.get('args') or {}).get('model_args', ''))) == config
    except ValueError:
        labelled = False
    if labelled:
        return run
    match = next((n for n in CONFIGS if registered_config(n) == config), None)
    if named:
        warnings.warn(f'{path} says {named} but its weights are of {match or "another config"}: its results are '
                      f'named {match or run}', stacklevel=3)
    return match or run


def load_model(name=None, weights=None, pretrained=None, overrides=None, seed=0):
    """The model to evaluate, as a :class:`LoadedModel`.

    ``name``: a registered model (:func:`lvae.list_models`); with ``weights`` that record their config it may be
    left out (the checkpoint's model), and when given it must have that config. ``weights``: a checkpoint path
    or URL; one without a config is loaded into ``name``. ``pretrained``: True, the registered weights (an error
    when there are none); False, an untrained model (weights seeded by ``seed``); None, the registered weights
    where there are some (or none are needed), else an untrained model (``untrained`` says so). ``overrides``:
    config fields (``--model_args``), for models built by name only.
    """
    overrides = dict(overrides or {})
    if name is not None and name not in list_models():
        raise ValueError(f'unknown model {name!r}; known models: {", ".join(list_models())}')
    if weights:
        path = download(weights) if is_url(weights) else os.fspath(weights)
        ckpt = load_file(path)
        label = weights if is_url(weights) else os.path.basename(path)
        if isinstance(ckpt, dict) and isinstance(ckpt.get('config'), dict):
            if overrides:
                raise ValueError(f'{weights} records its model config; --model_args cannot change it')
            if name in CONFIGS:
                differ = config_difference(registered_config(name), registered_config(config=ckpt['config']))
                if differ:
                    raise ValueError(f'{weights} holds a {ckpt.get("model_name", "model")} whose config differs from '
                                     f'{name} in {", ".join(differ)}; drop --model to evaluate the checkpoint\'s own '
                                     f'model, or give the weights of a {name}')
            model, ckpt = model_from_checkpoint(ckpt)
            return LoadedModel(model, checkpoint_name(ckpt, path), label, sha256_file(path))
        if name is None:
            raise ValueError(f'{weights} records no model config: name the model (--model NAME) to load it into')
        model = get_model(name, **overrides)
        try:
            load_weights(model, ckpt)
        except ValueError as e:
            raise ValueError(f'{weights}: {e}') from None
        return LoadedModel(model, name, label, sha256_file(path))
    if name is None:
        raise ValueError('name a model (--model NAME) or give its weights (--weights PATH_OR_URL)')
    entry = pretrained_cfg(name) if name in list_models() else None
    if pretrained is True and entry is None:
        raise ValueError(f'no pretrained weights are registered for {name!r} (models with weights: '
                         f'{", ".join(list_models(pretrained=True)) or "none"}); pass --weights PATH_OR_URL, or '
                         f'--random-init to evaluate an untrained model')
    if pretrained is False or (pretrained is None and entry is None and not is_weightless(name)):
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # reproducible untrained weights, the caller's RNG left as it was
            return LoadedModel(get_model(name, **overrides), name, untrained=not is_weightless(name))
    if entry is None:  # an analytic model: nothing to load
        return LoadedModel(get_model(name, **overrides), name)
    source = entry['source']
    model = get_model(name, pretrained=True, **overrides)
    return LoadedModel(model, name, source if is_url(source) else os.path.basename(source),
                       sha256_file(download(source) if is_url(source) else source))
