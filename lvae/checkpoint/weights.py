"""The weights a checkpoint holds: found in it, loaded strictly into a model, or exported as a lean file."""
import os

import torch

from lvae.checkpoint.remote import sha256_file
from lvae.checkpoint.files import file_target, load_file, save_checkpoint


def state_dict_of(ckpt, source='checkpoint'):
    """The model weights held by a loaded checkpoint (under ``'model'``, or the dict itself)."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get('model'), dict):
        ckpt = ckpt['model']
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f'{source} holds no model weights (expected a state-dict, or a dict with a '
                         f"'model' state-dict)")
    return ckpt


def _names(keys, limit=8):
    keys = sorted(keys)
    return ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def load_weights(model, source, sha256=None):
    """Load weights from a path, URL or loaded checkpoint into ``model`` (strict); return the checkpoint.

    Key or shape mismatches raise a ValueError naming the missing, unexpected and mis-shaped keys.
    """
    from_file = isinstance(source, (str, os.PathLike))
    label = os.fspath(source) if from_file else 'checkpoint'
    ckpt = load_file(source, sha256=sha256) if from_file else source
    state = state_dict_of(ckpt, label)
    own = model.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    shapes = [f'{k} {list(state[k].shape)} vs {list(own[k].shape)}' for k in own.keys() & state.keys()
              if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f'{len(missing)} missing: {_names(missing)}' if missing else '',
                 f'{len(unexpected)} unexpected: {_names(unexpected)}' if unexpected else '',
                 f'{len(shapes)} of another shape (file vs model): {_names(shapes, 4)}' if shapes else '']
        raise ValueError(f'weights in {label} do not fit {type(model).__name__}: ' + '; '.join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return ckpt


def export_weights(source, path):
    """Write the lean file a user shares or ships: weights (``'model'``), ``model_name``, ``config`` and ``iter``
    of a training checkpoint (e.g. ``RUN/last_ema.pt``), without optimizer or RNG state. Returns its sha256."""
    file_target(path)  # before the source is read
    ckpt = load_file(source)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('config'), dict):
        raise ValueError(f'{source} records no model config (expected a train-var-rate.py checkpoint)')
    lean = {'model': state_dict_of(ckpt, os.fspath(source)), 'config': ckpt['config']}
    lean.update({k: ckpt[k] for k in ('model_name', 'iter') if k in ckpt})
    save_checkpoint(lean, path)
    return sha256_file(path)
