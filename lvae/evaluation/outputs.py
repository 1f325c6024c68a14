"""Where an evaluation's result goes and how it gets there (docs/evaluation.md, "Outputs").

- The default name says what was measured: ``<name>-<test set>[-refine<N>][-samples<K>][-seed<S>][-padded-pixels]
  .json`` (only settings that differ from the defaults appear), and the plot ``<same>.png`` beside it.
- An output never replaces what an evaluation did not write: the JSON must end in ``.json``; an existing one must
  be a result; an existing plot must be one that lvae drew or sit beside a result.
- A result of other settings (model, weights, images, lambdas, draws, seed, refinement, precision) is never
  replaced without ``overwrite``; two evaluations never write one output at once (a lock held while one works).
- Each image's figures go to a journal beside the output as they are done (``.<name>.json.journal``): an evaluation
  stopped part way resumes from it when run again with the same settings; it is removed once the result is written.
- The JSON and its plot are written whole to temporary files, then both renamed: a failure (a full disk) or a
  signal leaves the previous pair as it was and no temporary file.
"""
import contextlib
import errno
import fcntl
import glob
import json
import os
import pwd
import re

from lvae.errors import write_failure
from lvae.evaluation.results import atomic_path, check_writable

PLOT_SOFTWARE = 'lvae evaluation'  # the PNG 'Software' text of every plot an evaluation draws
# What a result records that changes its numbers: a result is replaced only by one that agrees on all of them.
SETTINGS = ('model', 'model_config', 'weights_sha256', 'test-set', 'lambdas', 'bpp_pixels', 'samples', 'seed',
            'refine', 'amp', 'noise', 'lvae', 'torch')
# The longest name an evaluation writes beside its output ``<name>``: the temporary file of a part's journal,
# ``..<name>.journal-KKKK-of-NNNN.<8 characters>.tmp``; a name the file system refuses is refused before the work
LONGEST_BESIDE = len('..') + len('.journal-9999-of-9999') + len('.abcdefgh.tmp')


class OutputError(ValueError):
    """An output that would replace something it must not; the message names it and the way out."""


def default_output(name, test_set, refine=0, samples=1, seed=0, bpp_pixels='original', folder=os.path.join(
        'runs', 'eval')):
    """The default result path of an evaluation: its settings that differ from the defaults are in the name."""
    parts = [f'{name}-{test_set}']
    if refine:
        parts.append(f'refine{refine}')
    if samples != 1:
        parts.append(f'samples{samples}')
    if seed != 0:
        parts.append(f'seed{seed}')
    if bpp_pixels != 'original':
        parts.append(f'{bpp_pixels}-pixels')
    return os.path.join(folder, '-'.join(parts).replace(os.sep, '_') + '.json')


def hidden_beside(out, suffix):
    """``.<name><suffix>`` in the folder of ``out``: the lock and the journal of an evaluation writing it."""
    return os.path.join(os.path.dirname(os.path.abspath(out)), '.' + os.path.basename(out) + suffix)


def journal_path(out, part=None):
    """The journal of an evaluation writing ``out`` (:mod:`lvae.evaluation.journal`), or of its ``part``
    (:class:`lvae.evaluation.shards.Part`: ``.<name>.journal-K-of-N``)."""
    return hidden_beside(out, '.journal' + (part.suffix if part else ''))


def journals_beside(out):
    """The journals of every evaluation writing ``out`` there now, whole or of any part, any split."""
    main = journal_path(out)
    folder, stem = os.path.dirname(main), os.path.basename(main)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(os.path.join(folder, n) for n in names
                  if n == stem or re.fullmatch(re.escape(stem) + r'-\d+-of-\d+', n))


def plot_path(out):
    """The plot beside result ``out`` (``x.json`` -> ``x.png``)."""
    return os.path.splitext(out)[0] + '.png'


def read_result(path):
    """The evaluation result held at ``path`` (a dict), or None when the file is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get('results'), dict) and 'lambdas' in data else None


def drawn_by_lvae(png):
    """True when ``png`` is a plot an evaluation drew (its PNG 'Software' text)."""
    from PIL import Image
    try:
        with Image.open(png) as img:
            return img.info.get('Software') == PLOT_SOFTWARE
    except (OSError, ValueError):
        return False


def check_output(out):
    """Raise :class:`OutputError` (or OSError) before the work unless ``out`` may receive a result and its plot: a
    ``.json`` name, writable, holding nothing that is not a result, its plot path holding nothing but a plot."""
    out = os.fspath(out)
    if os.path.isdir(out):
        check_writable(out)  # the folder's message: give a file name
    if os.path.splitext(out)[1].lower() != '.json':
        raise OutputError(f'--output must name a .json file (the plot goes beside it as .png), got {out}')
    png = plot_path(out)
    result = read_result(out) if os.path.lexists(out) else None
    if os.path.lexists(out) and (result is None or os.path.islink(out)):
        raise OutputError(f'{out} exists and is not an evaluation result: it is left alone; choose another --output')
    if os.path.lexists(png) and (os.path.islink(png) or not (drawn_by_lvae(png) or result is not None)):
        raise OutputError(f'{png} exists and is not a plot of an evaluation: it is left alone; choose another '
                          f'--output')
    folder = os.path.dirname(os.path.abspath(out))
    try:
        name_max = os.pathconf(folder, 'PC_NAME_MAX') if os.path.isdir(folder) else 255
    except (OSError, ValueError):
        name_max = 255
    if len(os.path.basename(out)) + LONGEST_BESIDE > name_max:
        raise OutputError(f'--output {os.path.basename(out)!r} is {len(os.path.basename(out))} characters long: the '
                          f'evaluation writes files beside it (its journal, lock and temporary files) whose names are '
                          f'up to {LONGEST_BESIDE} characters longer, more than the {name_max} this file system takes; '
                          f'choose a name of at most {name_max - LONGEST_BESIDE} characters')
    for path in (out, png):
        check_writable(path)
    return out, png


def check_outside(out, folder):
    """Raise :class:`OutputError` when result ``out`` (or its plot) would land inside the image ``folder`` being
    evaluated: the next evaluation of that folder would read the plot as a test image."""
    if folder is None:
        return
    inside = os.path.commonpath([os.path.realpath(folder), os.path.realpath(os.path.dirname(os.path.abspath(out)))])
    if inside == os.path.realpath(folder):
        raise OutputError(f'--output {out} is inside the image folder {folder}: its plot would be read as a test '
                          f'image by the next evaluation of that folder; choose an --output outside it')


def check_settings(out, record, overwrite=False):
    """Raise :class:`OutputError` when ``out`` holds a result whose settings (:data:`SETTINGS`) differ from
    ``record``'s (the new result's) and ``overwrite`` is off: a result is never silently replaced by another."""
    old = read_result(out) if os.path.exists(out) else None
    if old is None or overwrite:
        return
    record = json.loads(json.dumps(record))  # as the result will read back
    differ = [key for key in SETTINGS if old.get(key) != record.get(key)]
    if differ:
        shown = ', '.join(_difference(key, old.get(key), record.get(key)) for key in differ)
        raise OutputError(f'{out} holds a result of other settings ({shown}); choose another --output, or pass '
                          f'--overwrite to replace it')


def _difference(key, there, now):
    """``key`` and its two values, or for two dicts (a model's config) the fields that differ."""
    if isinstance(there, dict) and isinstance(now, dict):
        return ', '.join(_difference(f'{key}.{k}', there.get(k), now.get(k)) for k in sorted({*there, *now})
                         if there.get(k) != now.get(k))
    return f'{key} {_short(there)} there, {_short(now)} now'


def _short(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + '...'


@contextlib.contextmanager
def output_lock(out, part=None):
    """Hold ``out`` (or its ``part``) for one evaluation: a second one asking for it meanwhile gets
    :class:`OutputError` naming the process. The lock (``.<name>.lock[-K-of-N]`` beside it, a POSIX lock) is removed
    at the block's end before it is released, and released by the system when a process dies; whoever takes it
    checks that the file it locked is still the one at its path (else another took the path's new file: it tries
    again), so two evaluations never both hold it. The holder first removes the temporary files that a killed
    write of its own files (the result, the plot, the journal) left."""
    lock = hidden_beside(out, '.lock' + (part.suffix if part else ''))
    what = f'part {part.label} of {out}' if part else out
    while True:
        fd = _locked(lock, what)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it after we opened it: the lock is the path's file now
    try:
        try:  # who holds it, for the message of a second evaluation (on a full disk the lock works without it)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass
        _remove_leftovers(([out, plot_path(out)] if part is None else []) + [journal_path(out, part)])
        try:
            yield
        finally:
            os.remove(lock)
    finally:
        os.close(fd)


def _locked(lock, what):
    """A descriptor of ``lock`` (opened or made) holding its POSIX lock; OutputError if another process holds it."""
    try:
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise OSError(f'cannot write {lock}: {e.strerror or e}{_owner_hint(lock, e)}') from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise OSError(f'cannot lock {lock}: {e.strerror or e}') from None
        raise OutputError(f'another evaluation (pid {_holder(lock)}) is writing {what} now; wait for it, or choose '
                          f'another --output') from None
    return fd


def _owner_hint(lock, error):
    """Where the lock is another user's file: whose, and the ways out."""
    try:
        owner = os.stat(lock).st_uid
    except OSError:
        return ''
    if error.errno != errno.EACCES or owner == os.getuid():
        return ''
    try:
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        name = f'uid {owner}'
    return (f'; the lock is {name}\'s: an evaluation of theirs writes this output, or one of theirs was killed and '
            f'left it (then remove it); or choose another --output')


def _holder(lock):
    try:
        with open(lock) as f:
            return f.read(64).strip() or 'unknown'
    except OSError:
        return 'unknown'


def _remove_leftovers(paths):
    """Remove the temporaries (:func:`lvae.evaluation.results.atomic_path`) of writes of ``paths`` that a kill cut
    short: only their writer, who held the lock, could have been making them."""
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        for leftover in glob.glob(os.path.join(glob.escape(folder), '.' + glob.escape(name) + '.' + '?' * 8 + '.tmp')):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)


def write_pair(out, write_json, draw_plot):
    """Write result ``out`` and its plot together: ``write_json(tmp)`` and ``draw_plot(tmp)`` fill temporary files
    beside them, then both are renamed into place. A failure raises OSError naming the path, with the previous
    pair intact and no temporary file left."""
    png = plot_path(out)
    target = png
    try:
        with atomic_path(png) as tmp_png, atomic_path(out) as tmp_json:
            draw_plot(tmp_png)
            target = out
            write_json(tmp_json)
    except OSError as e:
        raise OSError(f'cannot write {target}: {write_failure(e, os.path.dirname(os.path.abspath(target)))}; '
                      f'the previous result there, if any, is unchanged') from None
    return out, png
