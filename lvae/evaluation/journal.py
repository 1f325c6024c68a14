"""An evaluation's journal: each image's figures written as they are done, so that an evaluation stopped part way
(a signal, a lost machine, the end of a job's time) resumes where it was instead of starting over.

The file holds JSON lines: first the settings that decide the figures (:func:`journal_settings`), then one line per
finished image: its index, file name, a digest of its pixels, its bits and MSEs per draw and lambda (float64, written
exactly), the refinement's steps and the seconds it took. Each line is flushed to disk before the next image starts;
a last line cut short by a kill is dropped when the journal is read. A resumed evaluation gives the same numbers as
one run through, since every draw is seeded by image and lambda, never by the order of the work.
"""
import contextlib
import hashlib
import json
import os
import warnings

import numpy as np
import torch

from lvae.errors import write_failure
from lvae.evaluation.results import atomic_path

VERSION = 2  # 2: the model's config and the code's versions in the settings
WHOLE = 'whole'  # the part of an evaluation not spread (lvae.evaluation.shards)


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
    """What a journal's figures depend on; an evaluation resumes from a journal only when all of them agree: the
    model's config (every field: ``smooth_mean`` changes the forward, no weight) and weights, the evaluation's
    settings, and the code that computes them (lvae's and torch's versions). As JSON reads it back."""
    import lvae
    return json.loads(json.dumps({
        'version': VERSION, 'config': model.config.to_dict(), 'weights': model_digest(model),
        'lambdas': [float(v) for v in lambdas], 'samples': int(samples), 'seed': int(seed),
        'refine': refinement.record(seed) if refinement else None, 'amp': amp, 'noise': noise,
        'device': device.type, 'tf32': bool(tf32), 'lvae': lvae.__version__, 'torch': torch.__version__}))


def _indexed(lines):
    """The entries among a journal's ``lines``, by their index (lines without an integer index are left out)."""
    return {e['index']: e for e in lines if isinstance(e, dict) and type(e.get('index')) is int}


class Journal:
    """The journal at ``path``, and the journals at ``others`` (read only: those of the other parts of a spread
    evaluation, lvae.evaluation.shards). ``discard_other``: a journal of other settings is set aside (ours replaced,
    the others not read; otherwise it is a :class:`JournalError`). :meth:`start` reads what is done, :meth:`done`
    gives an image's figures if any journal holds them, :meth:`add` writes them to ours, :meth:`remove` deletes
    them all once the result is safe. ``part``: the :class:`~lvae.evaluation.shards.Part` whose figures this one
    writes (each entry says which)."""

    def __init__(self, path, discard_other=False, others=(), part=None):
        self.path = os.fspath(path)
        self.label = part.label if part is not None else WHOLE  # which part's figures it writes
        self.others = [os.fspath(o) for o in others if os.fspath(o) != self.path]
        self.discard_other = discard_other
        self.entries = {}  # ours
        self.found = {}    # those of the other journals
        self.taken = {}    # those the other ranks sent (:meth:`take`)

    def start(self, settings):
        """Read the journals (if any) for an evaluation of ``settings``; returns how many images they hold."""
        lines = self._read(self.path)
        if lines and not self._agrees(self.path, lines, settings):
            lines = []
        self.entries = _indexed(lines[1:])
        with self._writing():
            with atomic_path(self.path) as tmp, open(tmp, 'w') as f:  # rewritten whole: a line cut short is dropped
                for line in [{'settings': settings}, *self.entries.values()]:
                    f.write(json.dumps(line) + '\n')
                f.flush()
                os.fsync(f.fileno())
        self.found = {}
        for other in self.others:
            lines = self._read(other)
            if lines and self._agrees(other, lines, settings):
                self.found.update(_indexed(lines[1:]))
        return len(self.held())

    def _agrees(self, path, lines, settings):
        """Whether the journal at ``path`` (its ``lines``) is of ``settings``; False where it is of others and
        ``discard_other``; a :class:`JournalError` otherwise."""
        if not (isinstance(lines[0], dict) and isinstance(lines[0].get('settings'), dict)):
            raise JournalError(f'{path} is not the journal of an evaluation: it is left alone; choose another '
                               f'--output')
        if lines[0] == {'settings': settings}:
            return True
        if self.discard_other:
            return False
        old = lines[0]['settings']
        differ = sorted(k for k in settings if old.get(k) != settings[k])
        raise JournalError(f'{path} holds the unfinished work of an evaluation of other settings '
                           f'({", ".join(differ) or "its version"} differ): remove it, pass --overwrite to '
                           f'discard it, or choose another --output')

    def held(self):
        """Every image's entry that a journal holds (ours first), by index."""
        return {**self.found, **self.taken, **self.entries}

    def take(self, entries):
        """Hold ``entries`` (index -> entry, as :meth:`held` gives them: another rank's) as if read from a journal."""
        self.taken.update(entries)

    def done(self, index, name, digest, size):
        """The figures of image ``index`` (a dict with ``bits``, ``mse``, ``steps``, ``seconds``, each array of
        ``size`` values) when a journal holds them for these pixels, else None. A damaged entry (a value missing,
        of another length or not a finite number) is not taken: the image is evaluated again, with a warning naming
        the journal."""
        for held in (self.entries, self.taken, self.found):
            entry = held.get(index)
            if entry is None or entry.get('file') != name or entry.get('digest') != digest:
                continue
            try:
                figures = {'bits': np.array(entry['bits'], dtype=np.float64),
                           'mse': np.array(entry['mse'], dtype=np.float64),
                           'steps': np.array(entry['steps'], dtype=np.int64), 'seconds': float(entry['seconds']),
                           'part': str(entry.get('part', WHOLE))}
                if not all(figures[k].shape == (size,) and np.isfinite(figures[k]).all() for k in ('bits', 'mse')) \
                        or figures['steps'].shape != (size,):
                    raise ValueError('of another length or not finite')
            except (KeyError, TypeError, ValueError) as e:
                what = f'no {e}' if isinstance(e, KeyError) else str(e)
                warnings.warn(f'{self.path if held is self.entries else "a journal beside it"}: the entry of {name} '
                              f'is damaged ({what}): the image is evaluated again', stacklevel=2)
                continue
            return figures
        return None

    def add(self, index, name, digest, bits, mse, steps, seconds):
        """Write image ``index``'s figures to disk before going on."""
        entry = {'index': index, 'file': name, 'digest': digest, 'bits': np.asarray(bits, np.float64).tolist(),
                 'mse': np.asarray(mse, np.float64).tolist(), 'steps': np.asarray(steps).tolist(),
                 'seconds': float(seconds), 'part': self.label}
        with self._writing(), open(self.path, 'a') as f:
            f.write(json.dumps(entry) + '\n')
            f.flush()
            os.fsync(f.fileno())
        self.entries[index] = entry

    @contextlib.contextmanager
    def _writing(self):
        """An OSError while writing the journal names it and what stopped the write (a full disk, ...)."""
        try:
            yield
        except OSError as e:
            raise OSError(f'cannot write the journal {self.path}: '
                          f'{write_failure(e, os.path.dirname(os.path.abspath(self.path)))}; the images it holds are '
                          f'kept: the same command resumes once it can be written') from None

    def remove(self):
        """Delete our journal and the others read."""
        for path in [self.path, *self.others]:
            try:
                os.remove(path)
            except FileNotFoundError:  # another rank's, removed by it
                pass

    @staticmethod
    def _read(path):
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as e:
            raise JournalError(f'cannot read the journal {path}: {e}') from None
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                if not lines:
                    return [None]  # not a journal (start() says so)
                break  # the last line, cut short by a kill: that image is done again
        return lines
