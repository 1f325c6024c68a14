"""Checkpoint files: safe loading (``weights_only=True``), downloads into torch's hub cache, atomic saves.

A checkpoint is a dict. Weights sit under ``'model'`` (the authors' files and ours); a bare state-dict is
accepted too. Checkpoints written by ``train-var-rate.py`` also hold ``'model_name'`` and ``'config'``, so
:func:`lvae.models.model_from_checkpoint` rebuilds the model from the file alone. ``python -m lvae.checkpoint``
exports the lean weights of a training checkpoint (:func:`export_weights`).
"""
import hashlib
import os
import pickle
import tempfile
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from lvae.errors import first_line, write_failure


def is_url(source):
    return isinstance(source, str) and urlparse(source).scheme in ('http', 'https')


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def download(url, sha256=None, progress=True):
    """Download ``url`` once into ``<torch hub dir>/checkpoints/`` and return the local path.

    ``sha256``, when given, is checked (a prefix is enough); a failed check deletes nothing cached.
    """
    cache_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(cache_dir, exist_ok=True)
    filename = os.path.basename(urlparse(url).path) or 'checkpoint.pt'
    path = os.path.join(cache_dir, filename)
    if not os.path.exists(path):
        try:
            torch.hub.download_url_to_file(url, path, hash_prefix=sha256, progress=progress)
        except (URLError, OSError) as e:
            raise RuntimeError(f'could not download {url}: {e}. Without network, download the file elsewhere '
                               f'and pass its local path instead.') from e
        except RuntimeError as e:  # torch's hash mismatch
            raise RuntimeError(f'{url}: {e}') from e
    elif sha256 and not sha256_file(path).startswith(sha256):
        raise RuntimeError(f'cached file {path} does not match the expected sha256 {sha256}; delete it to '
                           f'download again')
    return path


# How a file written by torch.save begins: a zip archive (torch >= 1.6) or a pickle (the legacy format).
_TORCH_MAGIC = (b'PK\x03\x04', b'\x80')


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, unwritable folder); the message names the file."""


def _unreadable(path, error):
    """Why the checkpoint at ``path`` did not load, in one line, and what to do (never 'load it unsafely')."""
    with open(path, 'rb') as f:
        head = f.read(8)
    if not head:
        return f'{path} is empty (0 bytes): an interrupted copy, save or download? Copy or download it again'
    if not head.startswith(_TORCH_MAGIC):
        kind = 'a text file' if all(32 <= b < 127 or b in b'\t\r\n' for b in head) else 'another kind of file'
        return f'{path} is not a PyTorch checkpoint (it begins with {head!r}: {kind})'
    if isinstance(error, pickle.UnpicklingError):
        return (f'{path} holds Python objects other than tensors and plain data, which lvae does not load (only '
                f'weights_only=True); re-save it as a dict of tensors (its state-dict)')
    return (f'{path} is truncated or corrupt ({type(error).__name__}: {first_line(error).split(". ")[0]}); copy '
            f'or download it again')


def load_file(source, map_location='cpu', sha256=None):
    """Load a checkpoint from a path or an http(s) URL with ``weights_only=True``; errors (ValueError,
    FileNotFoundError) name the file and say what is wrong with it."""
    path = download(source, sha256=sha256) if is_url(source) else os.fspath(source)
    if os.path.isdir(path):
        raise ValueError(f'{path} is a folder, not a checkpoint file (a run folder? its weights are '
                         f'{os.path.join(path, "last_ema.pt")}; train-var-rate.py --resume {path} continues it)')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(_unreadable(path, e)) from e


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


def save_checkpoint(obj, path):
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename: a kill never leaves a torn file, and
    a failed write (a full disk, an unwritable folder) leaves the previous ``path`` as it was and raises
    :class:`CheckpointWriteError` naming ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shared run folders unreadable to others
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        raise CheckpointWriteError(f'cannot write {path}: {write_failure(e, folder)}') from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def export_weights(source, path):
    """Write the lean file a user shares or ships: weights (``'model'``), ``model_name``, ``config`` and ``iter``
    of a training checkpoint (e.g. ``RUN/last_ema.pt``), without optimizer or RNG state. Returns its sha256."""
    ckpt = load_file(source)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('config'), dict):
        raise ValueError(f'{source} records no model config (expected a train-var-rate.py checkpoint)')
    lean = {'model': state_dict_of(ckpt, os.fspath(source)), 'config': ckpt['config']}
    lean.update({k: ckpt[k] for k in ('model_name', 'iter') if k in ckpt})
    save_checkpoint(lean, path)
    return sha256_file(path)
