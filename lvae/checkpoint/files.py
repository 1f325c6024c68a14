"""Checkpoint files: loaded with ``weights_only=True`` (a file that does not load is diagnosed in one line), saved
atomically (temporary file, fsync, rename)."""
import os
import pickle
import tempfile

import torch

from lvae.checkpoint.remote import download, is_url
from lvae.errors import first_line, write_failure


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


def file_target(path):
    """``path`` as a string; :class:`CheckpointWriteError` when it names a folder."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(os.sep):
        raise CheckpointWriteError(f'cannot write {path}: it names a folder; give a file name, e.g. '
                                   f'{os.path.join(path, "weights.pt")}')
    return path


def save_checkpoint(obj, path):
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename: a kill never leaves a torn file, and
    a failed write (a full disk, an unwritable folder) leaves the previous ``path`` as it was and raises
    :class:`CheckpointWriteError` naming ``path``."""
    path = file_target(path)
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
