"""Run folders and their checkpoints: ``<runs_root>/<project>/<name>/`` with ``run.json`` (the run's claim and
identity), ``last.pt`` (everything needed to continue), ``last_ema.pt`` (the EMA weights of the same iteration),
``best.pt`` (the best validated weights), ``failed.pt``, ``validations.jsonl`` (:mod:`lvae.training.validation`).

A run folder is claimed when its run starts: ``run.json`` is created exclusively (two runs started together can
never share a folder) and, while a process works on the run, it holds a POSIX lock on that file, which the OS
drops when the process dies (so a killed run never blocks its own ``--resume``, and a run cannot be continued
by two processes at once). Every checkpoint is written atomically (:func:`lvae.checkpoint.save_checkpoint`)
and loads with ``weights_only=True``. A folder also records the torchrun rendezvous id that wrote it
(``torchelastic_run_id``), so that workers restarted by ``torchrun --max-restarts`` find their run again.
"""
import datetime
import errno
import glob
import json
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from lvae.cli import UsageError
from lvae.checkpoint import CheckpointWriteError, load_file, save_checkpoint
from lvae.models.rd.zoo import config_difference, parse_model_args, registered_config
from lvae.evaluation.results import save_json

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are claimed, but not locked while they run
    fcntl = None

ELASTIC_ID_FILE = 'torchelastic_run_id'
RUN_FILE = 'run.json'      # created once, exclusively, when a run starts: its model and config
OWNER_FILE = 'run.owner'   # the process working on the run now (host, pid, since)
# What every last.pt holds (older ones may lack the rest, which a resume fills in)
TRAINING_KEYS = ('model', 'model_name', 'config', 'iter', 'optimizer', 'args', 'epoch', 'rng')
# Flags that only say where a run is: never compared or recorded on --resume.
LOCATING_FLAGS = ('resume', 'runs_root')


# ------------------------------------------------------------------------------------------------ claims
def _lock(fd, path):
    """Take the POSIX lock of the open file ``fd`` without waiting: True if this process holds it now, False if
    another process does. Where the file system has no POSIX locks, True (with a warning)."""
    if fcntl is None:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):  # held by another process
            return False
        warnings.warn(f'{path}: no POSIX locks on this file system ({e.strerror}): nothing stops a second process '
                      f'from continuing this run at the same time', RuntimeWarning, stacklevel=2)
        return True


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _describe_owner(folder):
    owner = _read_json(os.path.join(folder, OWNER_FILE)) or {}
    return f'pid {owner["pid"]} on {owner["host"]} since {owner["since"]}' if 'pid' in owner else 'another process'


class RunClaim:
    """Rank 0's hold on a run folder: ``run.json`` opened and locked for as long as this process lives.
    :meth:`new` starts a run in a folder no run has used; :meth:`existing` takes over a run to continue it."""

    def __init__(self, folder, fd):
        self.folder, self._fd = folder, fd
        save_json(os.path.join(folder, OWNER_FILE), {'host': socket.gethostname(), 'pid': os.getpid(),
                                                     'since': _now()})

    @classmethod
    def new(cls, project_dir, name, model, config, run_id=None):
        """Claim ``<project_dir>/<name>``, or without ``name`` the first free ``<model>_<n>``; refused (UsageError)
        when the named folder holds a run."""
        try:
            os.makedirs(project_dir, exist_ok=True)
        except OSError as e:
            raise UsageError(f'cannot make the runs folder {project_dir}: {e.strerror or e}{_way_out(project_dir)}') \
                from None
        identity = {'model': model, 'config': config, 'created': _now(), 'torchelastic_run_id': run_id}
        if name:
            folder = os.path.join(project_dir, name)
            try:
                os.makedirs(folder, exist_ok=True)
                if os.path.exists(os.path.join(folder, 'last.pt')) and not os.path.exists(
                        os.path.join(folder, RUN_FILE)):
                    raise FileExistsError  # a run from before run.json
                return cls(folder, _create_exclusive(os.path.join(folder, RUN_FILE), identity))
            except FileExistsError:
                raise UsageError(taken_message(folder)) from None
            except OSError as e:
                raise UsageError(f'cannot start a run in {folder}: {e.strerror or e}{_way_out(folder)}') from None
        n = next_run_number(project_dir, model)
        while True:
            folder = os.path.join(project_dir, f'{model}_{n}')
            try:
                os.mkdir(folder)  # exclusive: of two runs started together, one gets <model>_n, the other n + 1
                return cls(folder, _create_exclusive(os.path.join(folder, RUN_FILE), identity))
            except FileExistsError:
                n += 1
            except OSError as e:
                raise UsageError(f'cannot start a run in {folder}: {e.strerror or e}{_way_out(folder)}') from None

    @classmethod
    def existing(cls, folder, identity, wait=0.0):
        """Take over the run in ``folder`` to continue it; refused while another process works on it, after waiting
        up to ``wait`` seconds (a restarted torchrun worker waits for the old one). ``identity`` (``model``,
        ``config``) makes the ``run.json`` of a run from before there was one."""
        path = os.path.join(folder, RUN_FILE)
        try:
            try:
                fd = _create_exclusive(path, identity)
            except FileExistsError:
                fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise UsageError(f'cannot continue the run in {folder}: {e.strerror or e} ({path})') from None
        deadline = time.monotonic() + wait
        while not _lock(fd, path):
            if time.monotonic() >= deadline:
                os.close(fd)
                raise UsageError(f'{folder} is in use by a running training process ({_describe_owner(folder)}): '
                                 f'two processes must not write one run; wait for it to end or stop it, then '
                                 f'--resume {folder}')
            time.sleep(0.5)
        return cls(folder, fd)

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # also drops the lock
            self._fd = None


def _way_out(path):
    """For a folder that this user may not write: whose it is, and the flags that put a run elsewhere."""
    above = path
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if os.access(above, os.W_OK):
        return ''
    try:
        import pwd
        owner = pwd.getpwuid(os.stat(above).st_uid).pw_name
    except (ImportError, KeyError, OSError):
        owner = 'another user'
    return (f' ({above} belongs to {owner}); put your runs elsewhere with --runs_root DIR, or in another '
            f'project folder with --wbproject NAME')


def _now():
    return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def _create_exclusive(path, identity):
    """Create ``path`` (FileExistsError if it exists), write ``identity`` as JSON, lock it; returns its open fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _lock(fd, path)
        os.write(fd, (json.dumps(identity, indent=1) + '\n').encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _running(folder):
    """Whether a process holds the run in ``folder`` now (the lock on its run.json)."""
    try:
        fd = os.open(os.path.join(folder, RUN_FILE), os.O_RDWR)
    except OSError:
        return False
    try:
        return not _lock(fd, folder)
    finally:
        os.close(fd)  # drops the lock taken to look


def taken_message(folder):
    """Why a new run cannot start in ``folder``, and the ways out."""
    identity = _read_json(os.path.join(folder, RUN_FILE)) or {}
    what = f'a {identity["model"]} run' if identity.get('model') else 'a run'
    if identity.get('created'):
        what += f' started {identity["created"]}'
    if _running(folder):
        return (f'{folder} already holds {what}, running now ({_describe_owner(folder)}); choose another --name, or '
                f'continue that run with --resume {folder} once it has stopped')
    if not os.path.exists(os.path.join(folder, 'last.pt')):
        return (f'{folder} already holds {what} that stopped before its first checkpoint (no last.pt to --resume); '
                f'choose another --name, or remove the folder to start it again')
    return f'{folder} already holds {what}; continue it with --resume {folder}, or choose another --name'


def next_run_number(folder, model):
    """One more than the largest n of the ``<model>_<n>`` folders in ``folder``."""
    taken = [int(m.group(1)) for d in (os.listdir(folder) if os.path.isdir(folder) else [])
             if (m := re.fullmatch(re.escape(model) + r'_(\d+)', d))]
    return max(taken, default=0) + 1


def find_run(resume, project_dir):
    """``--resume``: a run folder, or a run name under ``project_dir``, holding last.pt."""
    candidates = list(dict.fromkeys([resume, os.path.join(project_dir, resume)]))
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, 'last.pt')):
            return folder
        if os.path.isfile(os.path.join(folder, RUN_FILE)):
            where = '' if folder == resume else f' ({folder})'
            raise UsageError(f'--resume {resume}{where} has no last.pt: its run is running, or stopped before its '
                             f'first checkpoint; remove the folder to start that run again')
    raise UsageError(f'--resume {resume}: no last.pt in {" nor in ".join(candidates)}')


def elastic_run(project_dir, run_id, name=None):
    """The folder under ``project_dir`` (only ``name`` when given) that the rendezvous ``run_id`` wrote, or None."""
    for marker in glob.glob(os.path.join(project_dir, name or '*', ELASTIC_ID_FILE)):
        with open(marker) as f:
            if f.read().strip() == run_id:
                return os.path.dirname(marker)
    return None


def continued_run(resume, name, procs, project_dir):
    """The folder of the run a start continues, or None for a new run: ``resume`` (a folder or a run name);
    else, for workers restarted by torchrun, the folder their rendezvous wrote (``name``'s, when given).
    Read-only, the same on every rank."""
    if resume:
        return find_run(resume, project_dir)
    if procs.restarts and procs.run_id:
        return elastic_run(project_dir, procs.run_id, name)
    return None


def prepare_run_folder(folder, run_id=None):
    """Remove temporary files of a save killed midway, record the rendezvous id (rank 0, after its claim)."""
    for stale in glob.glob(os.path.join(folder, '.*.tmp')):
        os.remove(stale)
    if run_id:
        with open(os.path.join(folder, ELASTIC_ID_FILE), 'w') as f:
            f.write(run_id)


def write_args(folder, settings):
    """``args.json``: the run's flags (:meth:`lvae.training.settings.RunSettings.to_flags`)."""
    save_json(os.path.join(folder, 'args.json'), settings.to_flags())


# ------------------------------------------------------------------------------------------------ resuming
def check_last_pt(folder, ckpt):
    """Refuse (UsageError naming the file) a last.pt that cannot continue the run in ``folder``: one that is not a
    training checkpoint, one whose weights are not of the model it names, one of another run's model."""
    path = os.path.join(folder, 'last.pt')
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        weights_only = isinstance(ckpt, dict) and 'model' in ckpt
        raise UsageError(f'{path} is not a training checkpoint (missing: {", ".join(missing)})'
                         + ('; it holds weights only: evaluate it with eval-var-rate.py --weights, or start a new '
                            'run from it with --weights' if weights_only else ''))
    name = ckpt['model_name']
    try:
        expected = registered_config(name, parse_model_args(ckpt['args'].get('model_args', '')))
        config = registered_config(config=ckpt['config'])
    except ValueError as e:
        raise UsageError(f'{path}: {e}') from None
    if expected != config:
        raise UsageError(f'{path} says {name} (with --model_args {ckpt["args"].get("model_args")!r}) but holds a model '
                         f'of another config: the file does not belong to this run')
    identity = _read_json(os.path.join(folder, RUN_FILE))
    if identity and identity.get('model') and identity['model'] != name:
        raise UsageError(f'{path} holds a {name}, but the run in {folder} is a {identity["model"]} ({RUN_FILE}): '
                         f'the file comes from another run')
    if identity and identity.get('model') and 'config' not in identity:
        raise UsageError(f'{os.path.join(folder, RUN_FILE)} names the run\'s model ({name}) but not its config, which '
                         f'lvae writes there when a run starts: the file was edited or damaged; restore it, or start '
                         f'a new run from the weights with --weights {path}')
    if identity and identity.get('model') and identity['config'] != config:
        field = config_difference(config, identity['config'])[0]
        raise UsageError(f'{path} holds a {name} whose {field} is {config.get(field)!r}, but the run in {folder} is '
                         f'one whose {field} is {identity["config"].get(field)!r} ({RUN_FILE}): the file comes from '
                         f'another run')


def check_iterations(folder, ckpt, iterations):
    """Refuse (UsageError) to continue a run that has done its ``iterations`` already: nothing would happen."""
    if ckpt['iter'] >= iterations:
        raise UsageError(f'the run in {folder} is at iteration {ckpt["iter"]} (last.pt), which --iterations '
                         f'{iterations} does not pass: give more --iterations to train it further')


def resume_flags(saved, given, defaults, fixed):
    """The flags of a continued run: ``saved`` (its last.pt's, over today's ``defaults`` for flags added since) and
    those ``given`` on the command line. A given flag among ``fixed`` (those that define the run) with another
    value than the saved one is an error naming both, one missing from ``saved`` and not given an error naming it,
    one unknown today a warning; any other changes ``{flag: [saved, given]}`` are returned
    with the flags, to be stated and recorded. Returns ``(flags, changes)``."""
    lost = [k for k in fixed if k not in saved and k not in given]
    if lost:
        raise UsageError(f'the checkpoint does not record {", ".join("--" + k for k in lost)}, which define'
                         f'{"s" if len(lost) == 1 else ""} the run: give {"it" if len(lost) == 1 else "them"} with '
                         f'the value{"s" if len(lost) > 1 else ""} the run was trained with (its args.json may say)')
    unknown = sorted(set(saved) - set(defaults))
    if unknown:
        warnings.warn(f'the checkpoint records flags that this lvae does not have, ignored: '
                      f'{", ".join("--" + k for k in unknown)}', RuntimeWarning)
        saved = {k: v for k, v in saved.items() if k in defaults}
    flags = {**defaults, **saved}
    conflicts = [f'--{k} {v!r} (the run has {flags.get(k)!r})' for k, v in given.items()
                 if k in fixed and v != flags.get(k)]
    if conflicts:
        raise UsageError(f'these flags define the run and cannot change on --resume: {"; ".join(conflicts)}; drop '
                         f'them to continue the run as it is, or start a new run with another --name')
    changes = {k: [flags.get(k), v] for k, v in given.items() if k not in LOCATING_FLAGS and v != flags.get(k)}
    return {**flags, **given}, changes


# ------------------------------------------------------------------------------------------------ RNG
def rng_state(device):
    """This process's RNG states as tensors and plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state(device) if device.type == 'cuda' else None,
            'numpy': [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            'python': random.getstate()}


def set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and state['cuda'] is not None:
        torch.cuda.set_rng_state(state['cuda'], device)
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ checkpoints
@dataclass
class RunState:
    """What a run tracks besides its trainer: where it is in the data, its wandb id, the unreadable training images
    replaced (a CPU tensor of the loader's counts, read at logs) and the flags changed on each resume
    (``[{'iter', 'changes': {flag: [before, after]}}]``). Its validations are in ``validations.jsonl``."""
    epoch: int = 0
    wandb_id: str = None
    skipped_images: torch.Tensor = None
    flag_changes: list = field(default_factory=list)

    def __post_init__(self):
        if self.skipped_images is None:
            self.skipped_images = torch.zeros((), dtype=torch.int64)


HEAD_KEYS = ('model_name', 'config', 'iter', 'wandb_id', 'args', 'flag_changes', 'epoch')


def header(settings, trainer, run):
    """What every checkpoint file of a run records (:data:`HEAD_KEYS`)."""
    return {'model_name': settings.model, 'config': trainer.model.config.to_dict(), 'iter': trainer.iter,
            'wandb_id': run.wandb_id, 'args': settings.to_flags(), 'flag_changes': run.flag_changes,
            'epoch': run.epoch}


def checkpoint_dict(head, weights, **parts):
    """A checkpoint file's dict, the one way every file of a run is made: its ``head`` (:func:`header`, or the
    :data:`HEAD_KEYS` of a loaded one), its ``weights`` under ``'model'``, and the ``parts`` of its kind (last.pt:
    the trainer's state and the RNGs; last_ema.pt: the EMA step; best.pt: the validation)."""
    return {**{k: head[k] for k in HEAD_KEYS if k in head}, 'model': weights, **parts}


def save_checkpoints(folder, settings, trainer, run, procs, device, name='last.pt'):
    """Write ``name`` (last.pt), then last_ema.pt of the same iteration (failed.pt alone). Every rank calls it: the
    RNG states of all ranks are gathered into the file, and every rank raises the CheckpointWriteError of rank 0's
    write (a full disk), so that all stop together."""
    rng = procs.gather(rng_state(device))
    error = None
    if procs.master:
        try:
            _write_checkpoints(folder, settings, trainer, run, rng, name)
        except OSError as e:
            error = e
    if procs.any(error is not None):
        raise error if error is not None else CheckpointWriteError('rank 0 could not write its checkpoint')


def _write_checkpoints(folder, settings, trainer, run, rng, name):
    state = trainer.state_dict()
    head = header(settings, trainer, run)
    recipe = trainer.recipe
    save_checkpoint(checkpoint_dict(
        head, trainer.model.state_dict(), **{k: v for k, v in state.items() if k != 'counters'},
        recipe=recipe.to_dict(), rng=rng, counters={**state['counters'], 'skipped_images': int(run.skipped_images)},
        scheduler={'sched': recipe.lr_sched, 'iterations': recipe.iterations, 'lr': recipe.lr,
                   'warmup': recipe.lr_warmup, 'lrf_min': recipe.lrf_min}), os.path.join(folder, name))
    if trainer.ema is not None and name == 'last.pt':
        save_checkpoint(checkpoint_dict(head, state['ema'], ema_step=state['ema_step']),
                        os.path.join(folder, 'last_ema.pt'))


def load_run(folder):
    """A run's last.pt."""
    return load_file(os.path.join(folder, 'last.pt'))


def continue_run(ckpt, trainer, procs, device, seed, changes):
    """Load a last.pt into the trainer and this process's RNG states; returns the :class:`RunState`, with the flag
    ``changes`` of this resume recorded. With another number of processes than the run had, the RNGs get fresh
    seeds, different from the run's start."""
    trainer.load_state_dict(ckpt)
    run = RunState(epoch=ckpt['epoch'] + 1, wandb_id=ckpt.get('wandb_id'),
                   flag_changes=list(ckpt.get('flag_changes') or []))
    if changes:
        run.flag_changes.append({'iter': trainer.iter, 'changes': changes})
    run.skipped_images.fill_(ckpt.get('counters', {}).get('skipped_images', 0))
    if len(ckpt['rng']) == procs.world:
        set_rng_state(ckpt['rng'][procs.rank], device)
    else:
        seed_everything(seed + procs.rank + 1_000_003 * trainer.iter)
    return run


def repair_last_ema(folder, ckpt):
    """Rewrite last_ema.pt from last.pt's EMA where the pair is not of one iteration (a stop between the two
    writes); returns whether it did."""
    path = os.path.join(folder, 'last_ema.pt')
    if ckpt.get('ema') is None:
        return False
    try:
        ema_iter = torch.load(path, map_location='cpu', weights_only=True, mmap=True).get('iter')
    except Exception:  # missing, torn or unreadable: written anew
        ema_iter = None
    if ema_iter == ckpt['iter']:
        return False
    save_checkpoint(checkpoint_dict({'flag_changes': [], **ckpt}, ckpt['ema'], ema_step=ckpt.get('ema_step')), path)
    return True
