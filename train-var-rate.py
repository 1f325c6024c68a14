"""Train a variable-rate R(D) bound model (Duan et al., ICIP 2023): one training loop configured by flags.

One process per device. Examples (docs/training.md has the rest)::

    python train-var-rate.py --model rd_model_base                           # one GPU (or CPU)
    torchrun --nproc_per_node 4 train-var-rate.py --model rd_model_base      # DDP on 4 GPUs
    python train-var-rate.py --model rd_model_tiny --trainset ../shared/datasets/photos \
        --valset ../shared/datasets/kodak --iterations 200 --batch_size 4 --device cpu   # CPU demo
    python train-var-rate.py --resume rd_model_base_1                        # continue a run

``--batch_size`` is per process and micro-step: one optimizer step sees batch_size * accum_num * world_size
images. Each run lives in ``<runs_root>/<wbproject>/<name>/`` with last.pt (everything needed to resume),
last_ema.pt (EMA weights) and best.pt (the validated weights of the best BD-rate, or of the lowest
validation loss when the validation set has no anchor curve).
"""
import argparse
import copy
import glob
import json
import math
import os
import random
import re
import secrets
import signal
import statistics
import sys
import time
import warnings
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import lvae
from lvae import accel
from lvae.bdrate import DEFAULT_ANCHOR, MIN_POINTS, bd_rate, resolve_anchor
from lvae.checkpoint import load_file, load_weights, save_checkpoint
from lvae.cli import parse_model_args
from lvae.data import ImageFolderCrops, parse_transform
from lvae.evaluation import evaluate_bound, lambda_grid, resolve_images
from lvae.images import check_images
from lvae.memory import reuse_freed_memory
from lvae.models.rd.model import VariableRateLossyVAE
from lvae.paths import dataset_name
from lvae.plotting import plot_rd

SPIKE_FACTOR = 10.0     # an update whose gradient norm exceeds this many times the recent median is skipped
SPIKE_WINDOW = 100      # ... the median of the last this many accepted updates
SPIKE_MIN_HISTORY = 20  # ... once that many are known
SPIKE_LR_CUT = 0.5      # and the learning rate is multiplied by this factor for the rest of the run
EXIT_BAD_STEPS = 3      # exit status after --max_bad_steps non-finite losses in a row


class UsageError(ValueError):
    """A bad flag value: reported as one line, exit status 2."""


# ------------------------------------------------------------------------------------------------ flags
def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', default='rd_model_base', help='zoo model name (lvae.list_models())')
    g.add_argument('--model_args', default='', help="config overrides as Python literals, e.g. "
                   "\"lmb_range=(4,2048)\" (parsed with ast.literal_eval, never evaluated)")
    g.add_argument('--weights', default=None, help='initialise from these weights (file or URL)')
    g = p.add_argument_group('data')
    g.add_argument('--trainset', default='coco-train2017', help='training folder or known dataset name')
    g.add_argument('--transform', default='crop=256,hflip=True',
                   help='random crop size (reflect padding for smaller images) and horizontal flip')
    g.add_argument('--valset', default='kodak', help='validation folder or known dataset name')
    g.add_argument('--val_steps', type=int, default=8, help='validation lambdas, log-spaced over lmb_range')
    g.add_argument('--val_images', type=int, default=0, help='validate on the first N images only (0: all)')
    g.add_argument('--workers', type=int, default=4, help='DataLoader workers per process')
    g = p.add_argument_group('optimisation')
    g.add_argument('--batch_size', type=int, default=16, help='images per process and micro-step')
    g.add_argument('--accum_num', type=int, default=1, help='micro-steps (gradient accumulation) per update')
    g.add_argument('--iterations', type=int, default=200_000, help='optimizer updates in total')
    g.add_argument('--lr', type=float, default=2e-4, help='Adam learning rate')
    g.add_argument('--lr_sched', default='const-0.5-cos',
                   help="'const', 'cos', or 'const-F-cos' (constant for a fraction F, then cosine)")
    g.add_argument('--lrf_min', type=float, default=0.01, help='final LR as a fraction of --lr')
    g.add_argument('--lr_warmup', type=int, default=0, help='linear LR warm-up iterations')
    g.add_argument('--grad_clip', type=float, default=2.0, help='gradient-norm clipping (0: off)')
    g.add_argument('--max_bad_steps', type=int, default=5, help='stop after this many non-finite losses in a row')
    g.add_argument('--ema', action=argparse.BooleanOptionalAction, default=True, help='keep EMA weights')
    g.add_argument('--ema_decay', type=float, default=0.9999, help='EMA decay (reached after a warm-up)')
    g.add_argument('--amp', choices=('none', 'bf16'), default='none', help='autocast precision')
    g.add_argument('--compile', action='store_true', help='torch.compile the ConvNeXt blocks')
    g.add_argument('--fixseed', action='store_true', help='seed everything (rank r uses seed + r)')
    g.add_argument('--seed', type=int, default=0, help='base seed with --fixseed')
    g.add_argument('--device', default='auto', help="'auto' (cuda when present), 'cuda' or 'cpu'")
    g = p.add_argument_group('logging and checkpoints')
    g.add_argument('--name', default=None, help='run name (default: <model>_<n>, n incrementing)')
    g.add_argument('--runs_root', default='runs', help='runs live in <runs_root>/<wbproject>/<name>/')
    g.add_argument('--resume', default=None, help='run folder or name to continue (flags given now override '
                   'the saved ones)')
    g.add_argument('--eval_interval', type=int, default=2000, help='validate and checkpoint every N iterations')
    g.add_argument('--save_interval', type=int, default=0, help='also checkpoint every N iterations (0: only '
                   'at validation)')
    g.add_argument('--log_interval', type=int, default=20, help='log training figures every N iterations')
    g.add_argument('--wbmode', choices=('disabled', 'offline', 'online'), default='disabled', help='wandb mode')
    g.add_argument('--wbproject', default='lvae', help='wandb project (also the runs sub-folder)')
    g.add_argument('--wbentity', default=None, help='wandb entity (team or user)')
    g.add_argument('--wbgroup', default=None, help='wandb group')
    g.add_argument('--wbtags', default='', help='comma-separated wandb tags')
    return p


def explicit_flags(parser, argv):
    """The flags given on the command line (not defaults), as {dest: value}."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return vars(quiet.parse_args(argv))


def lr_factor(it, iterations, sched='const-0.5-cos', warmup=0, lrf_min=0.01):
    """Multiplier of the base LR at iteration ``it`` (0-based): linear warm-up over ``warmup`` iterations,
    then ``sched``: 'const'; 'cos' (cosine from 1 to ``lrf_min``); 'const-F-cos' (1 for a fraction F of the
    run, cosine to ``lrf_min`` over the rest)."""
    match = re.fullmatch(r'const-([0-9]*\.?[0-9]+)-cos', sched)
    if sched == 'const':
        factor = 1.0
    elif sched == 'cos' or match:
        flat = int(float(match.group(1)) * iterations) if match else 0
        if it < flat:
            factor = 1.0
        else:
            t = min(1.0, (it - flat) / max(1, iterations - flat))
            factor = lrf_min + (1 - lrf_min) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        raise UsageError(f"--lr_sched must be 'const', 'cos' or 'const-F-cos' (0 <= F <= 1), got {sched!r}")
    if warmup > 0 and it < warmup:
        factor *= (it + 1) / warmup
    return factor


def scheduled_lr(args, it):
    """The LR of iteration ``it`` before gradient spikes cut it (--lr times :func:`lr_factor`)."""
    return args.lr * lr_factor(it, args.iterations, args.lr_sched, args.lr_warmup, args.lrf_min)


def check_args(args):
    positive = ('batch_size', 'accum_num', 'iterations', 'eval_interval', 'log_interval', 'val_steps',
                'max_bad_steps')
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f'--{name} must be >= 1, got {getattr(args, name)}')
    for name in ('workers', 'val_images', 'lr_warmup', 'save_interval', 'grad_clip'):
        if getattr(args, name) < 0:
            raise UsageError(f'--{name} must be >= 0, got {getattr(args, name)}')
    if not args.lr > 0 or not 0 <= args.lrf_min <= 1 or not 0 <= args.ema_decay < 1:
        raise UsageError('need --lr > 0, 0 <= --lrf_min <= 1 and 0 <= --ema_decay < 1')
    if args.model not in lvae.list_models():
        raise UsageError(f'unknown model {args.model!r}; known: {", ".join(lvae.list_models())}')
    lr_factor(0, args.iterations, args.lr_sched)  # validates the schedule name
    args.transform_kw = parse_transform(args.transform)
    args.model_kw = parse_model_args(args.model_args)


# ------------------------------------------------------------------------------------------------ helpers
def rng_state(device):
    """RNG states as tensors and plain types (loadable with weights_only=True)."""
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


def next_run_name(folder, model):
    """``<model>_<n>`` with n one more than the largest existing in ``folder``."""
    taken = [int(m.group(1)) for d in (os.listdir(folder) if os.path.isdir(folder) else [])
             if (m := re.fullmatch(re.escape(model) + r'_(\d+)', d))]
    return f'{model}_{max(taken, default=0) + 1}'


def find_run(resume, runs_root, project):
    """``--resume``: a run folder, or a run name under ``<runs_root>/<project>/``, holding last.pt."""
    for folder in (resume, os.path.join(runs_root, project, resume)):
        if os.path.isfile(os.path.join(folder, 'last.pt')):
            return folder
    raise UsageError(f'--resume {resume}: no last.pt in {resume} nor in {os.path.join(runs_root, project, resume)}')


def infinite_batches(loader, sampler, epoch):
    """Yield batches forever, re-shuffling (``sampler.set_epoch``) at each pass over the data."""
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1


def validate(model, val_paths, args, anchor, device):
    """Bound evaluation on the validation images at ``args.val_steps`` lambdas. Returns a dict of scalars
    (``val/loss``: the training objective, nats per dimension + lambda * MSE in [-1, 1] scale, averaged over
    images and lambdas, recomputed from the per-image bpp and MSE; ``val/bd_rate`` vs the anchor when there
    is one: ``(label, bpp, psnr)``) and the curve."""
    lambdas = lambda_grid(model.config.lmb_range, args.val_steps)
    res = evaluate_bound(model, val_paths, lambdas=lambdas, device=device, skip_invalid=True, progress=False,
                         amp=None if args.amp == 'none' else args.amp)
    bpp = np.array([im['bpp'] for im in res['per_image']])      # (images, lambdas), bits per pixel
    rate = bpp * math.log(2) / 3                                  # nats per dimension
    mse = 4 * np.array([im['mse'] for im in res['per_image']])  # MSE in [-1, 1] scale (evaluation's is on [0, 1])
    metrics = {'val/loss': float((rate + np.array(lambdas) * mse).mean()),
               'val/bpp': float(np.mean(res['bpp'])), 'val/psnr': float(np.mean(res['psnr']))}
    if anchor is not None and len(lambdas) >= MIN_POINTS:
        metrics['val/bd_rate'] = bd_rate(anchor[1], anchor[2], res['bpp'], res['psnr'])
    return metrics, res


def classify_update(loss, grad_norm, recent_norms):
    """The skip rules, as bool tensors ``(non_finite, spike)`` on the device: the loss or the gradient norm
    (0-d tensors) is inf / NaN; or the norm exceeds SPIKE_FACTOR times the median of ``recent_norms``
    ((SPIKE_WINDOW,), NaN where none is known yet) once SPIKE_MIN_HISTORY are known."""
    non_finite = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
    known = (~recent_norms.isnan()).sum()
    spike = (known >= SPIKE_MIN_HISTORY) & (grad_norm > SPIKE_FACTOR * torch.nanquantile(recent_norms, 0.5))
    return non_finite, spike & ~non_finite


class NoLogging:
    """What the run logs to with ``--wbmode disabled``: nothing (wandb is not even imported)."""

    def log(self, data, step=None):
        pass

    def finish(self):
        pass


def wandb_run(args, run_dir, wandb_id):
    """The wandb run of rank 0 (``wandb.init`` with the run's flags), or :class:`NoLogging` when disabled."""
    if args.wbmode == 'disabled':
        return NoLogging()
    import wandb
    return wandb.init(project=args.wbproject, entity=args.wbentity, group=args.wbgroup, name=args.name,
                      tags=[t for t in args.wbtags.split(',') if t], config=vars(args), dir=run_dir,
                      mode=args.wbmode, id=wandb_id, resume='allow')


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def better(key, best):
    """Ranking of validations: a finite BD-rate beats any validation without one; then lower is better."""
    return best is None or tuple(key) < tuple(best)


# ------------------------------------------------------------------------------------------------ setup
@dataclass(frozen=True)
class Processes:
    """Where this process sits among the training processes (torchrun sets RANK / LOCAL_RANK / WORLD_SIZE)."""
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls):
        if 'RANK' in os.environ and int(os.environ.get('WORLD_SIZE', '1')) > 1:
            return cls(int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE']))
        return cls()

    @property
    def ddp(self):
        return self.world > 1

    @property
    def master(self):
        return self.rank == 0

    def barrier(self):
        if self.ddp:
            dist.barrier()


def resolve_args(parser, argv, procs):
    """Flags (a resumed run's saved flags, overridden by those given now), checked. Returns ``(args, run_dir,
    resume_ckpt)``; ``resume_ckpt`` is None for a new run. Raises UsageError / ValueError / FileNotFoundError."""
    args, resume_ckpt = parser.parse_args(argv), None
    if args.resume:
        run_dir = find_run(args.resume, args.runs_root, args.wbproject)
        resume_ckpt = load_file(os.path.join(run_dir, 'last.pt'))
        saved = {**resume_ckpt['args'], **explicit_flags(parser, argv)}
        args = argparse.Namespace(**{**vars(parser.parse_args([])), **saved})
        args.resume = run_dir
    check_args(args)
    if not args.resume:  # every rank names the run before any creates a folder (after the rendezvous)
        project_dir = os.path.join(args.runs_root, args.wbproject)
        args.name = args.name or next_run_name(project_dir, args.model)
        run_dir = os.path.join(project_dir, args.name)
        if os.path.exists(os.path.join(run_dir, 'last.pt')):
            raise UsageError(f'{run_dir} already holds a run; continue it with --resume {run_dir} or choose '
                             f'another --name')
    if procs.master:
        check_wandb_login(args)
    return args, run_dir, resume_ckpt


def check_wandb_login(args):
    """``--wbmode online`` needs wandb credentials: refuse (UsageError) before any work when none are found.
    Looks where wandb does (WANDB_API_KEY, an identity token file, wandb's settings, ~/.netrc) without network."""
    if args.wbmode != 'online':
        return
    import wandb
    try:
        found = wandb.login(verify=False, prompt=False)
    except wandb.Error as e:
        raise UsageError(f'--wbmode online: wandb credentials are unusable ({e})') from e
    if not found:
        raise UsageError('--wbmode online needs a wandb login: run `wandb login` once, or set WANDB_API_KEY, '
                         'or use --wbmode offline (upload later with `wandb sync`)')


def load_datasets(args, world):
    """The training set (checked to fill one batch per process) and the validation image paths."""
    trainset = ImageFolderCrops(args.trainset, **args.transform_kw)
    if max(1, len(trainset) // world) < args.batch_size:
        raise UsageError(f'{len(trainset)} training images cannot fill one batch of {args.batch_size} per '
                         f'process on {world} process(es)')
    return trainset, resolve_images(args.valset)


def init_device(args, procs):
    """This process's device (cuda:<local rank> under torchrun), its backend flags, and the process group."""
    want = args.device if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(f'cuda:{procs.local_rank}' if want.startswith('cuda') and ':' not in want else want)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotune the convolutions once
    else:
        reuse_freed_memory()  # no page faults for every activation (lvae.memory)
    if procs.ddp:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', timeout=timedelta(minutes=60))
    return device


def prepare_model(model, device, args):
    """The model on ``device`` in its fastest faithful form (:func:`lvae.accel.prepare`, in place: checkpoints
    and EMA keep plain state-dict keys), its ConvNeXt blocks compiled with --compile, in training mode."""
    return accel.prepare(model, device, compile=args.compile).train()


# ------------------------------------------------------------------------------------------------ state
class UpdateGuard:
    """Which updates are skipped (:func:`classify_update`) and what follows: counters, the recent accepted
    gradient norms and the LR scale, all device tensors, so that deciding never waits for the device; the host
    reads them at logs and checkpoints."""

    def __init__(self, device):
        self.recent_norms = torch.full((SPIKE_WINDOW,), math.nan, device=device)  # accepted ones, oldest first
        self.lr_scale = torch.ones((), device=device)  # times SPIKE_LR_CUT at every spike
        zero = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_steps, self.spikes = zero.clone(), zero.clone()        # skipped updates, in all
        self.bad_in_row, self.longest_bad_run = zero.clone(), zero.clone()  # non-finite ones in a row

    def __call__(self, loss, grad_norm):
        """Judge one update (0-d tensors) and record it; returns whether to apply it, a bool tensor."""
        non_finite, spike = classify_update(loss, grad_norm, self.recent_norms)
        accept = ~(non_finite | spike)
        shifted = torch.cat([self.recent_norms[1:], grad_norm.float()[None]])
        self.recent_norms = torch.where(accept, shifted, self.recent_norms)
        self.lr_scale = torch.where(spike, self.lr_scale * SPIKE_LR_CUT, self.lr_scale)
        self.bad_steps += non_finite
        self.spikes += spike
        self.bad_in_row = torch.where(non_finite, self.bad_in_row + 1, 0)
        self.longest_bad_run = torch.maximum(self.longest_bad_run, self.bad_in_row)
        return accept

    def state_dict(self):
        """Plain numbers (a host-device synchronisation): the LR scale, the recent norms (oldest first), counters."""
        return {'lr_scale': float(self.lr_scale),
                'grad_norms': [n for n in self.recent_norms.tolist() if not math.isnan(n)],
                'bad_steps': int(self.bad_steps), 'spikes': int(self.spikes)}

    def load_state_dict(self, saved):
        self.lr_scale.fill_(saved['lr_scale'])
        norms = saved['grad_norms'][-SPIKE_WINDOW:]
        self.recent_norms[SPIKE_WINDOW - len(norms):] = torch.tensor(norms, dtype=self.recent_norms.dtype)
        self.bad_steps.fill_(saved['bad_steps'])
        self.spikes.fill_(saved['spikes'])


@dataclass
class TrainState:
    """Everything a run checkpoints besides its flags and RNG states: the plain (never DDP-wrapped) model, the
    optimizer, the update guard, the EMA (rank 0 only, else None), where the run is and what it has skipped."""
    model: VariableRateLossyVAE
    optimizer: torch.optim.Optimizer
    guard: UpdateGuard
    ema: object = None                       # timm ModelEmaV3, or None
    iter: int = 0                            # optimizer updates done (skipped ones included)
    epoch: int = 0                           # pass over the training data of the latest batch
    best_key: tuple = None                   # ranking of the best validation so far (see `better`)
    wandb_id: str = None
    # unreadable training images replaced, in all: a CPU tensor (the loader's counts), read at logs
    skipped_images: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))

    def lr(self, args):
        """The learning rate of the current update, a device tensor (spikes cut it on the device)."""
        return self.guard.lr_scale * scheduled_lr(args, self.iter)

    def header(self, args):
        """What every checkpoint file of the run records."""
        return {'model_name': args.model, 'config': self.model.config.to_dict(), 'iter': self.iter,
                'wandb_id': self.wandb_id, 'args': dict(vars(args))}

    def to_checkpoint(self, args, rng, metrics=None):
        """last.pt: the state and ``rng`` (the RNG states of every rank), loadable with weights_only=True."""
        guard = self.guard.state_dict()
        optimizer = self.optimizer.state_dict()
        optimizer['param_groups'] = [{**g, 'lr': float(g['lr'])} for g in optimizer['param_groups']]
        return {**self.header(args), 'epoch': self.epoch, 'metrics': metrics, 'model': self.model.state_dict(),
                'optimizer': optimizer, 'ema': self.ema.module.state_dict() if self.ema else None,
                'ema_step': self.iter if self.ema else None,
                'scheduler': {'sched': args.lr_sched, 'iterations': args.iterations, 'lr': args.lr,
                              'warmup': args.lr_warmup, 'lrf_min': args.lrf_min},
                'lr_scale': guard['lr_scale'], 'grad_norms': guard['grad_norms'], 'best_key': self.best_key,
                'rng': rng, 'counters': {'bad_steps': guard['bad_steps'], 'spikes': guard['spikes'],
                                         'skipped_images': int(self.skipped_images)}}

    def load_checkpoint(self, ckpt):
        """Continue from a last.pt (:meth:`to_checkpoint`); the model's weights are loaded by :func:`build_state`."""
        self.optimizer.load_state_dict(ckpt['optimizer'])
        for group in self.optimizer.param_groups:  # fused: its step skips updates on the device (`update`)
            group.update(fused=True, foreach=None)
        if self.ema is not None and ckpt.get('ema') is not None:
            self.ema.module.load_state_dict(ckpt['ema'])
        self.iter, self.epoch = ckpt['iter'], ckpt['epoch'] + 1
        self.best_key, self.wandb_id = ckpt['best_key'], ckpt['wandb_id']
        self.guard.load_state_dict({**ckpt['counters'], 'lr_scale': ckpt['lr_scale'],
                                    'grad_norms': ckpt.get('grad_norms', [])})
        self.skipped_images.fill_(ckpt['counters']['skipped_images'])


def build_state(args, device, procs, resume_ckpt):
    """Model (the zoo's, or the resumed run's), Adam, EMA on rank 0 (it alone validates and saves), and the
    resumed run's state and RNG states."""
    if resume_ckpt:
        model = VariableRateLossyVAE.from_config(resume_ckpt['config'])
        load_weights(model, resume_ckpt)
    else:
        model = lvae.get_model(args.model, pretrained=args.weights or False, **args.model_kw)
    ema = None
    if args.ema and procs.master:  # copied before prepare_model: the EMA is never compiled
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=args.ema_decay, use_warmup=True)
        ema.module.to(device)
    prepare_model(model, device, args)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    state = TrainState(model, optimizer, UpdateGuard(device), ema)
    if resume_ckpt:
        state.load_checkpoint(resume_ckpt)
        rng = resume_ckpt['rng']
        if len(rng) == procs.world:
            set_rng_state(rng[procs.rank], device)
        else:  # another number of processes: fresh seeds, different from the run's start
            seed_everything(args.seed + procs.rank + 1_000_003 * state.iter)
    return state


# ------------------------------------------------------------------------------------------------ rank 0's run
@dataclass
class RunFolder:
    """What rank 0 writes to: the run folder, the validation images and anchor, the wandb run."""
    path: str
    val_paths: list
    anchor: tuple      # (label, bpp, psnr) of the validation set's anchor curve, or None
    wb: object         # wandb run, or NoLogging


def open_run(args, run_dir, val_paths, state):
    """Rank 0: create the run folder (removing temporary files of a save killed midway), check the validation
    images, find the anchor, start wandb, write args.json."""
    os.makedirs(run_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(run_dir, '.*.pt.*.tmp')):
        os.remove(stale)
    val_paths, bad = check_images(val_paths)
    for e in bad:
        warnings.warn(f'validation image skipped: {e}', RuntimeWarning)
    anchor = resolve_anchor(DEFAULT_ANCHOR, dataset_name(args.valset), missing_ok=True)
    state.wandb_id = state.wandb_id or secrets.token_hex(4)  # fixed before init: a resumed run keeps it
    with open(os.path.join(run_dir, 'args.json'), 'w') as f:
        json.dump(vars(args), f, indent=1)
    return RunFolder(run_dir, val_paths[:args.val_images or None], anchor, wandb_run(args, run_dir, state.wandb_id))


def run_validation(run, state, args, device):
    """Rank 0 validates (the EMA weights when kept), updates best.pt and the R-D plot; returns the metrics."""
    net = state.ema.module if state.ema else state.model
    t0 = time.time()
    metrics, res = validate(net, run.val_paths, args, run.anchor, device)
    state.model.train()
    bd = metrics.get('val/bd_rate', float('nan'))
    key = (0, bd) if math.isfinite(bd) else (1, metrics['val/loss'])
    if better(key, state.best_key):
        state.best_key = key
        save_checkpoint({**state.header(args), 'model': net.state_dict(), 'metrics': metrics,
                         'ema_weights': bool(state.ema)}, os.path.join(run.path, 'best.pt'))
    png = plot_rd(os.path.join(run.path, 'val_rd.png'), [(args.name, res['bpp'], res['psnr'])], run.anchor,
                  title=f'{args.name}: {args.valset} at iteration {state.iter}')
    log = {**metrics, 'val/seconds': time.time() - t0}
    if args.wbmode != 'disabled':
        import wandb
        log['val/rd_curve'] = wandb.Image(png)
    run.wb.log(log, step=state.iter)
    tqdm.write(f'[iter {state.iter}] val loss {metrics["val/loss"]:.4f}  bpp {metrics["val/bpp"]:.4f}  '
               f'psnr {metrics["val/psnr"]:.3f}  bd-rate {f"{bd:+.2f}%" if math.isfinite(bd) else "n/a"}  '
               f'({time.time() - t0:.0f}s)')
    return metrics


def save_checkpoints(state, args, procs, run_dir, device, metrics=None, name='last.pt'):
    """Write last_ema.pt and ``name`` (last.pt, or failed.pt without last_ema.pt). Every rank calls it: the
    RNG states of all ranks are gathered."""
    rng = [None] * procs.world
    if procs.ddp:
        dist.all_gather_object(rng, rng_state(device))
    else:
        rng = [rng_state(device)]
    if not procs.master:
        return
    if state.ema and name == 'last.pt':
        save_checkpoint({**state.header(args), 'epoch': state.epoch, 'metrics': metrics,
                         'model': state.ema.module.state_dict(), 'ema_step': state.iter},
                        os.path.join(run_dir, 'last_ema.pt'))
    save_checkpoint(state.to_checkpoint(args, rng, metrics), os.path.join(run_dir, name))


# ------------------------------------------------------------------------------------------------ training
def training_batches(trainset, args, procs, device, epoch):
    """This rank's share of the training set: ``(epoch, (images, skipped))`` forever, from pass ``epoch``."""
    sampler = DistributedSampler(trainset, num_replicas=procs.world, rank=procs.rank, shuffle=True,
                                 seed=args.seed, drop_last=len(trainset) >= procs.world)
    loader = DataLoader(trainset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=device.type == 'cuda', persistent_workers=args.workers > 0, drop_last=True)
    return infinite_batches(loader, sampler, epoch)


def forward_backward(model, batches, state, args, procs, device):
    """The gradients of one update: --accum_num micro-batches (DDP all-reduces them at the last one). Returns
    (3,) ``[loss, bpp, psnr]`` on the device, averaged over micro-batches and ranks, and the number of images
    used here."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == 'bf16' else nullcontext()
    figures, images = torch.zeros(3, device=device), 0
    for micro in range(args.accum_num):
        state.epoch, (im, skipped) = next(batches)
        state.skipped_images += skipped.sum()
        images += len(im)
        im = im.to(device, non_blocking=True)
        sync = nullcontext() if not procs.ddp or micro == args.accum_num - 1 else model.no_sync()
        with sync:
            with autocast:
                out = model(im)
            (out['loss'] / args.accum_num).backward()
        figures += torch.stack([out[k].detach().float() for k in ('loss', 'bppix', 'psnr')])
    figures /= args.accum_num
    if procs.ddp:
        dist.all_reduce(figures)  # a non-finite loss on any rank reaches every rank
        figures /= procs.world
    return figures, images


def update(state, args, figures):
    """Clip the gradients; take the optimizer step and EMA update unless :class:`UpdateGuard` rejects the update
    (non-finite, or a gradient spike, which also cuts the LR). Decided and applied on the device: the fused
    Adam skips its step where ``found_inf`` is 1, the EMA moves by a weight of 0. Returns the gradient norm
    before clipping (a device tensor, identical on all ranks: the gradients are all-reduced)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), args.grad_clip or float('inf'))
    accept = state.guard(figures[0], grad_norm)
    state.optimizer.found_inf = (~accept).float()  # the interface torch.amp.GradScaler drives fused Adam by
    state.optimizer.step()
    if state.ema is not None:
        decay = torch.full((), state.ema.get_decay(state.iter + 1), dtype=torch.float64, device=accept.device)
        state.ema.apply_update_(state.model, decay=torch.where(accept, decay, 1.0))
    state.optimizer.zero_grad(set_to_none=True)
    return grad_norm


class Progress:
    """The progress bar (rank 0), training logs every --log_interval updates, and the throughput summary. The
    figures stay on the device between logs."""

    def __init__(self, args, state, procs, wb):
        self.args, self.procs, self.wb = args, procs, wb
        self.bar = tqdm(total=args.iterations, initial=state.iter, disable=not procs.master, dynamic_ncols=True,
                        desc=args.name if procs.master else None)
        guard = state.guard.state_dict()
        self.start_iter, self.images, self.skipped = state.iter, 0, (guard['bad_steps'], guard['spikes'])
        self.t_start = self.t_log = time.time()

    def log_due(self, state):
        return state.iter % self.args.log_interval == 0 or state.iter == self.args.iterations

    def step(self, state, images, lr, figures, grad_norm, device):
        """Count an update; when a log is due (rank 0), read its figures (a host-device synchronisation), log them
        to wandb and the bar, and report updates skipped since the last log."""
        self.bar.update(1)
        self.images += images
        if not self.procs.master or not self.log_due(state):
            return
        loss, bpp, psnr = figures.tolist()
        guard = state.guard.state_dict()
        log = {'train/loss': loss, 'train/bpp': bpp, 'train/psnr': psnr, 'train/lr': float(lr),
               'train/grad_norm': float(grad_norm), 'train/epoch': state.epoch,
               'train/sec_per_iter': (time.time() - self.t_log) / self.args.log_interval,
               'train/skipped_images': int(state.skipped_images), 'train/bad_steps': guard['bad_steps'],
               'train/grad_spikes': guard['spikes']}
        self.t_log = time.time()
        skipped = (guard['bad_steps'], guard['spikes'])
        if skipped != self.skipped:
            tqdm.write(f'[iter {state.iter}] updates skipped since the last log: {skipped[0] - self.skipped[0]} '
                       f'non-finite, {skipped[1] - self.skipped[1]} gradient spikes (LR scale now '
                       f'{guard["lr_scale"]:g}; last loss {loss:.4g}, grad norm {log["train/grad_norm"]:.4g})')
        self.skipped = skipped
        post = {'loss': f'{loss:.4f}', 'bpp': f'{bpp:.3f}', 'psnr': f'{psnr:.2f}', 'lr': f'{log["train/lr"]:.2e}',
                'gnorm': f'{log["train/grad_norm"]:.3g}'}
        if device.type == 'cuda':
            log['train/peak_mem_gb'] = torch.cuda.max_memory_allocated(device) / 2**30
            post['mem'] = f'{log["train/peak_mem_gb"]:.1f}G'
        self.bar.set_postfix(post)
        self.wb.log(log, step=state.iter)

    def close(self, state, outcome, run_dir):
        """Close the bar, print this process's throughput and (rank 0, when the run is done) its summary."""
        self.bar.close()
        seconds = time.time() - self.t_start
        print(f'rank {self.procs.rank}/{self.procs.world}: {state.iter - self.start_iter} updates on {self.images} '
              f'images in {seconds:.0f} s ({self.images / max(seconds, 1e-9):.1f} images/s, validation and '
              f'checkpoints included)', flush=True)
        if self.procs.master and outcome == 'done':
            guard = state.guard.state_dict()
            print(f'done: {state.iter} iterations; {guard["bad_steps"]} non-finite steps and {guard["spikes"]} '
                  f'gradient spikes skipped, {int(state.skipped_images)} unreadable images skipped; checkpoints in '
                  f'{run_dir}')


def stop_on_bad_steps(state, args, procs, run_dir, device, lr):
    """At a log (every rank, so all stop together): once --max_bad_steps non-finite updates in a row have
    happened, write failed.pt, say so (rank 0) and return True."""
    in_row = int(state.guard.longest_bad_run)
    if in_row < args.max_bad_steps:
        return False
    save_checkpoints(state, args, procs, run_dir, device, name='failed.pt')
    if procs.master:
        print(f'error: {in_row} non-finite losses in a row by iteration {state.iter} (lr {float(lr):.3g}); '
              f'stopping. The failing state is in {os.path.join(run_dir, "failed.pt")}; last.pt holds the last '
              f'checkpoint. Try a lower --lr, --grad_clip or --amp none.', file=sys.stderr)
    return True


def describe(args, state, procs, device, trainset, run_dir, resumed):
    """The run's opening line: model size, processes, data, images per update, folder, where a resume starts."""
    n_params = sum(p.numel() for p in state.model.parameters())
    lr = float(state.guard.lr_scale) * scheduled_lr(args, state.iter)
    return (f'{args.model}: {n_params / 1e6:.2f}M parameters on {device} x {procs.world} process(es); {trainset}; '
            f'{args.batch_size * args.accum_num * procs.world} images per update; run folder {run_dir}'
            + (f'; resuming at iteration {state.iter} (lr {lr:.6g}, EMA step '
               f'{state.iter if state.ema else None})' if resumed else ''))


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    procs = Processes.from_env()
    try:
        args, run_dir, resume_ckpt = resolve_args(get_parser(), argv, procs)
        trainset, val_paths = load_datasets(args, procs.world)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    device = init_device(args, procs)
    if args.fixseed:
        seed_everything(args.seed + procs.rank)
    state = build_state(args, device, procs, resume_ckpt)
    model = state.model  # what the loop calls; checkpoints and EMA use state.model
    if procs.ddp:
        model = DDP(model, device_ids=[procs.local_rank] if device.type == 'cuda' else None)
    batches = training_batches(trainset, args, procs, device, state.epoch)
    run = open_run(args, run_dir, val_paths, state) if procs.master else None
    if procs.master:
        print(describe(args, state, procs, device, trainset, run_dir, resumed=resume_ckpt is not None))
    progress = Progress(args, state, procs, run.wb if run else None)
    if procs.master and state.iter == 0:
        run_validation(run, state, args, device)
    procs.barrier()
    signal.signal(signal.SIGTERM, raise_interrupt)  # torchrun stops workers with SIGTERM
    outcome = 'done'
    try:
        while state.iter < args.iterations:
            lr = state.lr(args)
            for group in state.optimizer.param_groups:
                group['lr'] = lr
            figures, images = forward_backward(model, batches, state, args, procs, device)
            grad_norm = update(state, args, figures)
            state.iter += 1
            progress.step(state, images, lr, figures, grad_norm, device)
            if progress.log_due(state) and stop_on_bad_steps(state, args, procs, run_dir, device, lr):
                outcome = 'failed'
                break
            validate_now = state.iter % args.eval_interval == 0 or state.iter == args.iterations
            if validate_now or (args.save_interval and state.iter % args.save_interval == 0):
                metrics = run_validation(run, state, args, device) if procs.master and validate_now else None
                save_checkpoints(state, args, procs, run_dir, device, metrics)
                procs.barrier()
    except KeyboardInterrupt:
        if procs.master:
            print(f'\ninterrupted at iteration {state.iter}; resume from the last checkpoint with --resume '
                  f'{run_dir}', file=sys.stderr)
        outcome = 'interrupted'
    progress.close(state, outcome, run_dir)
    if procs.master:
        run.wb.finish()
    if procs.ddp:
        dist.destroy_process_group()
    return {'done': 0, 'failed': EXIT_BAD_STEPS, 'interrupted': 130}[outcome]


if __name__ == '__main__':
    sys.exit(main())
