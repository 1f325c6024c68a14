"""Run folders and their checkpoints: ``<runs_root>/<project>/<name>/`` with ``last.pt`` (everything needed to
continue), ``last_ema.pt`` (the EMA weights), ``best.pt`` (the best validated weights), ``failed.pt``.

Every file is written atomically (:func:`lvae.checkpoint.save_checkpoint`) and loads with
``weights_only=True``. A folder also records the torchrun rendezvous id that wrote it (``torchelastic_run_id``),
so that workers restarted by ``torchrun --max-restarts`` find their run again, named or not.
"""
import glob
import json
import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch

from lvae.checkpoint import load_file, save_checkpoint

ELASTIC_ID_FILE = 'torchelastic_run_id'


class UsageError(ValueError):
    """A bad flag value: reported as one line, exit status 2."""


def next_run_name(folder, model):
    """``<model>_<n>`` with n one more than the largest existing in ``folder``."""
    taken = [int(m.group(1)) for d in (os.listdir(folder) if os.path.isdir(folder) else [])
             if (m := re.fullmatch(re.escape(model) + r'_(\d+)', d))]
    return f'{model}_{max(taken, default=0) + 1}'


def find_run(resume, project_dir):
    """``--resume``: a run folder, or a run name under ``project_dir``, holding last.pt."""
    for folder in (resume, os.path.join(project_dir, resume)):
        if os.path.isfile(os.path.join(folder, 'last.pt')):
            return folder
    raise UsageError(f'--resume {resume}: no last.pt in {resume} nor in {os.path.join(project_dir, resume)}')


def elastic_run(project_dir, run_id, name=None):
    """The folder under ``project_dir`` (only ``name`` when given) that the rendezvous ``run_id`` wrote, or None."""
    for marker in glob.glob(os.path.join(project_dir, name or '*', ELASTIC_ID_FILE)):
        with open(marker) as f:
            if f.read().strip() == run_id:
                return os.path.dirname(marker)
    return None


def continued_run(args, procs, project_dir):
    """The folder of the run these flags continue, or None for a new run: ``--resume``; else, for workers
    restarted by torchrun, the folder their rendezvous wrote. Read-only, the same on every rank."""
    if args.resume:
        return find_run(args.resume, project_dir)
    if procs.restarts and procs.run_id:
        return elastic_run(project_dir, procs.run_id, args.name)
    return None


def new_run_folder(args, project_dir):
    """Rank 0: the folder of a new run (``--name`` or the next ``<model>_<n>``), refused when it holds a run."""
    folder = os.path.join(project_dir, args.name or next_run_name(project_dir, args.model))
    if os.path.exists(os.path.join(folder, 'last.pt')):
        raise UsageError(f'{folder} already holds a run; continue it with --resume {folder} or choose another '
                         f'--name')
    return folder


def create_run_folder(folder, run_id=None):
    """Make the folder, remove temporary files of a save killed midway, record the rendezvous id."""
    os.makedirs(folder, exist_ok=True)
    for stale in glob.glob(os.path.join(folder, '.*.pt.*.tmp')):
        os.remove(stale)
    if run_id:
        with open(os.path.join(folder, ELASTIC_ID_FILE), 'w') as f:
            f.write(run_id)


def write_args(folder, args):
    with open(os.path.join(folder, 'args.json'), 'w') as f:
        json.dump(vars(args), f, indent=1)


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
    """What a run tracks besides its trainer: where it is in the data, its best validation, its wandb id and
    the unreadable training images replaced (a CPU tensor of the loader's counts, read at logs)."""
    epoch: int = 0
    best_key: tuple = None   # ranking of the best validation so far: (0, BD-rate) or (1, loss); lower is better
    wandb_id: str = None
    skipped_images: torch.Tensor = None

    def __post_init__(self):
        if self.skipped_images is None:
            self.skipped_images = torch.zeros((), dtype=torch.int64)

    def better(self, key):
        """Whether a validation ranked ``key`` beats the best so far (and record it if so)."""
        if self.best_key is None or tuple(key) < tuple(self.best_key):
            self.best_key = key
            return True
        return False


def header(args, trainer, run):
    """What every checkpoint file of a run records."""
    return {'model_name': args.model, 'config': trainer.model.config.to_dict(), 'iter': trainer.iter,
            'wandb_id': run.wandb_id, 'args': dict(vars(args))}


def save_checkpoints(folder, args, trainer, run, procs, device, metrics=None, name='last.pt'):
    """Write last_ema.pt and ``name`` (last.pt; failed.pt without last_ema.pt). Every rank calls it: the RNG
    states of all ranks are gathered into the file."""
    rng = procs.gather(rng_state(device))
    if not procs.master:
        return
    state = trainer.state_dict()
    head = {**header(args, trainer, run), 'epoch': run.epoch, 'metrics': metrics}
    if trainer.ema is not None and name == 'last.pt':
        save_checkpoint({**head, 'model': state['ema'], 'ema_step': state['ema_step']},
                        os.path.join(folder, 'last_ema.pt'))
    recipe = trainer.recipe
    save_checkpoint({**head, **state, 'model': trainer.model.state_dict(), 'recipe': recipe.to_dict(),
                     'scheduler': {'sched': recipe.lr_sched, 'iterations': recipe.iterations, 'lr': recipe.lr,
                                   'warmup': recipe.lr_warmup, 'lrf_min': recipe.lrf_min},
                     'best_key': run.best_key, 'rng': rng,
                     'counters': {**state['counters'], 'skipped_images': int(run.skipped_images)}},
                    os.path.join(folder, name))


def load_run(folder):
    """A run's last.pt."""
    return load_file(os.path.join(folder, 'last.pt'))


def continue_run(ckpt, trainer, procs, device, seed):
    """Load a last.pt into the trainer and this process's RNG states; returns the :class:`RunState`. With
    another number of processes than the run had, the RNGs get fresh seeds, different from the run's start."""
    trainer.load_state_dict(ckpt)
    run = RunState(epoch=ckpt['epoch'] + 1, best_key=ckpt['best_key'], wandb_id=ckpt['wandb_id'])
    run.skipped_images.fill_(ckpt['counters']['skipped_images'])
    if len(ckpt['rng']) == procs.world:
        set_rng_state(ckpt['rng'][procs.rank], device)
    else:
        seed_everything(seed + procs.rank + 1_000_003 * trainer.iter)
    return run
