"""An evaluation's journal: each image's figures written as they are done, so that an evaluation stopped part way
(a signal, a lost machine, the end of a job's time) resumes where it was instead of starting over.

The file holds JSON lines: first the settings that decide the figures (:func:`journal_settings`), then one line per
finished image: its index, file name, a digest of its pixels, its bits and MSEs per draw and lambda (float64, written
exactly), the refinement's steps and the seconds it took. Each line is flushed to disk before the next image starts;
a last line cut short by a kill is dropped when the journal is read. A resumed evaluation gives the same numbers as
one run through, since every draw is seeded by image and lambda, never by the order of the work.
"""
import hashlib
import json
import os

import numpy as np
import torch

from lvae.evaluation.results import atomic_path

VERSION = 1


class JournalError(ValueError):
    """A journal that does not belong to this evaluation; the message names it and the way out."""


def model_digest(model):
    """sha256 of a model's state-dict (names, dtypes, shapes and values): the weights the figures come from."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        h.update(f'{name} {value.dtype} {tuple(value.shape)}'.encode())
        h.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b'')
    return h.hexdigest()


def image_digest(im):
    """sha256 of an image tensor's float32 values: the same pixels, whatever file they came from."""
    return hashlib.sha256(np.ascontiguousarray(im.detach().cpu().float().numpy()).tobytes()).hexdigest()


def journal_settings(model, lambdas, samples, seed, refinement, amp, noise, device, tf32):
    """What a journal's figures depend on; an evaluation resumes from a journal only when all of them agree."""
    return {'version': VERSION, 'weights': model_digest(model), 'lambdas': [float(v) for v in lambdas],
            'samples': int(samples), 'seed': int(seed), 'refine': refinement.record(seed) if refinement else None,
            'amp': amp, 'noise': noise, 'device': device.type, 'tf32': bool(tf32)}


class Journal:
    """The journal at ``path``. ``discard_other``: a journal of other settings there is replaced (otherwise it is a
    :class:`JournalError`). :meth:`start` reads what is done, :meth:`done` gives an image's figures if they are
    there, :meth:`add` writes them, :meth:`remove` deletes the journal once the result is safe."""

    def __init__(self, path, discard_other=False):
        self.path = os.fspath(path)
        self.discard_other = discard_other
        self.entries = {}

    def start(self, settings):
        """Read the journal (if any) for an evaluation of ``settings``; returns how many images it holds."""
        lines = self._read()
        if lines and not (isinstance(lines[0], dict) and isinstance(lines[0].get('settings'), dict)):
            raise JournalError(f'{self.path} is not the journal of an evaluation: it is left alone; choose another '
                               f'path for the journal')
        if lines and lines[0] != {'settings': settings}:
            if not self.discard_other:
                old = lines[0]['settings']
                differ = sorted(k for k in settings if old.get(k) != settings[k])
                raise JournalError(f'{self.path} holds the unfinished work of an evaluation of other settings '
                                   f'({", ".join(differ) or "its version"} differ): remove it, pass --overwrite to '
                                   f'discard it, or choose another --output')
            lines = []
        self.entries = {e['index']: e for e in lines[1:] if isinstance(e, dict) and 'index' in e}
        with atomic_path(self.path) as tmp, open(tmp, 'w') as f:  # rewritten whole: a line cut short is dropped
            for line in [{'settings': settings}, *self.entries.values()]:
                f.write(json.dumps(line) + '\n')
            f.flush()
            os.fsync(f.fileno())
        return len(self.entries)

    def done(self, index, name, digest):
        """The figures of image ``index`` (a dict with ``bits``, ``mse``, ``steps``, ``seconds``) when the journal
        holds them for these pixels, else None."""
        entry = self.entries.get(index)
        if entry is None or entry.get('file') != name or entry.get('digest') != digest:
            return None
        return {'bits': np.array(entry['bits'], dtype=np.float64), 'mse': np.array(entry['mse'], dtype=np.float64),
                'steps': np.array(entry['steps'], dtype=np.int64), 'seconds': float(entry['seconds'])}

    def add(self, index, name, digest, bits, mse, steps, seconds):
        """Write image ``index``'s figures to disk before going on."""
        entry = {'index': index, 'file': name, 'digest': digest, 'bits': np.asarray(bits, np.float64).tolist(),
                 'mse': np.asarray(mse, np.float64).tolist(), 'steps': np.asarray(steps).tolist(),
                 'seconds': float(seconds)}
        with open(self.path, 'a') as f:
            f.write(json.dumps(entry) + '\n')
            f.flush()
            os.fsync(f.fileno())
        self.entries[index] = entry

    def remove(self):
        if os.path.lexists(self.path):
            os.remove(self.path)

    def _read(self):
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise JournalError(f'cannot read the journal {self.path}: {e}') from None
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                if not lines:
                    return [None]  # not a journal (start() says so)
                break  # the last line, cut short by a kill: that image is done again
        return lines
