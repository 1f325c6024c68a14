"""Train a variable-rate R(D) bound model (Duan et al., ICIP 2023): one training loop configured by flags.

One process per device. Examples (see the README, "Training")::

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
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import lvae
from lvae.bdrate import DEFAULT_ANCHOR, bd_rate, resolve_anchor
from lvae.checkpoint import load_file, load_weights, save_checkpoint
from lvae.cli import parse_model_args
from lvae.data import ImageFolderCrops, parse_transform
from lvae.evaluation import evaluate_bound, lambda_grid, resolve_images
from lvae.images import check_images
from lvae.layers import preferred_memory_format
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
    images and lambdas, recomputed from the per-image bpp and PSNR; ``val/bd_rate`` vs the anchor when there
    is one: ``(label, bpp, psnr)``) and the curve."""
    lambdas = lambda_grid(model.config.lmb_range, args.val_steps)
    res = evaluate_bound(model, val_paths, lambdas=lambdas, device=device, skip_invalid=True, progress=False,
                         amp=None if args.amp == 'none' else args.amp)
    bpp = np.array([im['bpp'] for im in res['per_image']])      # (images, lambdas), bits per pixel
    psnr = np.array([im['psnr'] for im in res['per_image']])    # dB on [0, 1]
    rate = bpp * math.log(2) / 3                                  # nats per dimension
    mse = 4 * 10 ** (-psnr / 10)                                  # MSE in [-1, 1] scale
    metrics = {'val/loss': float((rate + np.array(lambdas) * mse).mean()),
               'val/bpp': float(np.mean(res['bpp'])), 'val/psnr': float(np.mean(res['psnr']))}
    if anchor is not None and len(lambdas) >= 4:
        metrics['val/bd_rate'] = bd_rate(anchor[1], anchor[2], res['bpp'], res['psnr'])
    return metrics, res


def classify_update(loss, grad_norm, recent_norms):
    """'non-finite' (loss or gradient norm is inf / NaN), 'spike' (gradient norm above SPIKE_FACTOR times
    the median of ``recent_norms``, once SPIKE_MIN_HISTORY are known) or 'ok'."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return 'non-finite'
    if len(recent_norms) >= SPIKE_MIN_HISTORY and grad_norm > SPIKE_FACTOR * statistics.median(recent_norms):
        return 'spike'
    return 'ok'


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


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = get_parser()
    args = parser.parse_args(argv)

    # ---- distributed setup: one process per device; torchrun sets RANK / LOCAL_RANK / WORLD_SIZE
    ddp = 'RANK' in os.environ and int(os.environ.get('WORLD_SIZE', '1')) > 1
    rank, local_rank, world = (int(os.environ['RANK']), int(os.environ['LOCAL_RANK']),
                               int(os.environ['WORLD_SIZE'])) if ddp else (0, 0, 1)
    master = rank == 0
    try:
        if args.resume:
            run_dir = find_run(args.resume, args.runs_root, args.wbproject)
            resume_ckpt = load_file(os.path.join(run_dir, 'last.pt'))
            saved = dict(resume_ckpt['args'])
            saved.update(explicit_flags(parser, argv))
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
        trainset = ImageFolderCrops(args.trainset, **args.transform_kw)
        if max(1, len(trainset) // world) < args.batch_size:
            raise UsageError(f'{len(trainset)} training images cannot fill one batch of {args.batch_size} per '
                             f'process on {world} process(es)')
        val_paths = resolve_images(args.valset)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2

    want = args.device if args.device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(f'cuda:{local_rank}' if want.startswith('cuda') and ':' not in want else want)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed crop size: autotune the convolutions once
    else:
        reuse_freed_memory()  # no page faults for every activation (lvae.memory)
    if ddp:
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo', timeout=timedelta(minutes=60))
    if args.fixseed:
        seed_everything(args.seed + rank)

    # ---- model, optimizer, EMA (EMA on rank 0 only: it alone validates and saves)
    start_iter, epoch, lr_scale, best_key, wandb_id = 0, 0, 1.0, None, None
    grad_norms = deque(maxlen=SPIKE_WINDOW)  # recent accepted gradient norms, for spike detection
    bad_total = spikes_total = skipped_images = 0
    if args.resume:
        model = VariableRateLossyVAE.from_config(resume_ckpt['config'])
        load_weights(model, resume_ckpt)
        start_iter, epoch, lr_scale = resume_ckpt['iter'], resume_ckpt['epoch'] + 1, resume_ckpt['lr_scale']
        best_key, wandb_id = resume_ckpt['best_key'], resume_ckpt['wandb_id']
        grad_norms.extend(resume_ckpt.get('grad_norms', []))
        bad_total, spikes_total, skipped_images = (resume_ckpt['counters'][k] for k in
                                                   ('bad_steps', 'spikes', 'skipped_images'))
    else:
        model = lvae.get_model(args.model, pretrained=args.weights or False, **args.model_kw)
    model.to(device, memory_format=preferred_memory_format(device)).train()
    raw = model
    optimizer = torch.optim.Adam(raw.parameters(), lr=args.lr, fused=device.type == 'cuda')
    ema = None
    if args.ema and master:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(raw, decay=args.ema_decay, use_warmup=True)
    if args.resume:
        optimizer.load_state_dict(resume_ckpt['optimizer'])
        if ema is not None and resume_ckpt.get('ema') is not None:
            ema.module.load_state_dict(resume_ckpt['ema'])
        rng = resume_ckpt['rng']
        if len(rng) == world:
            set_rng_state(rng[rank], device)
        else:
            seed_everything(args.seed + rank + 1_000_003 * start_iter)
    if args.compile:
        raw.compile_blocks()  # in place: checkpoints and EMA keep plain state-dict keys
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.type == 'cuda' else None)

    # ---- data
    sampler = DistributedSampler(trainset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=len(trainset) >= world)
    loader = DataLoader(trainset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=device.type == 'cuda', persistent_workers=args.workers > 0, drop_last=True)
    batches = infinite_batches(loader, sampler, epoch)

    def current_lr(it):
        return args.lr * lr_scale * lr_factor(it, args.iterations, args.lr_sched, args.lr_warmup, args.lrf_min)

    # ---- rank 0: run folder, validation set, wandb
    wb = None
    if master:
        os.makedirs(run_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(run_dir, '.*.pt.*.tmp')):  # left by a kill during a save
            os.remove(stale)
        val_paths, bad = check_images(val_paths)
        for e in bad:
            warnings.warn(f'validation image skipped: {e}', RuntimeWarning)
        val_paths = val_paths[:args.val_images or None]
        anchor = resolve_anchor(DEFAULT_ANCHOR, dataset_name(args.valset), missing_ok=True)  # (label, bpp, psnr)
        wandb_id = wandb_id or secrets.token_hex(4)  # fixed before init: a resumed run keeps it
        wb = wandb_run(args, run_dir, wandb_id)
        n_params = sum(p.numel() for p in raw.parameters())
        print(f'{args.model}: {n_params / 1e6:.2f}M parameters on {device} x {world} process(es); '
              f'{trainset}; {args.batch_size * args.accum_num * world} images per update; run folder {run_dir}'
              + (f'; resuming at iteration {start_iter} (lr {current_lr(start_iter):.6g}, EMA step '
                 f'{resume_ckpt["ema_step"]})' if args.resume else ''))
        with open(os.path.join(run_dir, 'args.json'), 'w') as f:
            json.dump(vars(args), f, indent=1)

    def checkpoint(it, metrics=None, failed=False):
        """Write last_ema.pt and last.pt (or failed.pt); every rank calls it (RNG states are gathered)."""
        rng = [None] * world
        if ddp:
            dist.all_gather_object(rng, rng_state(device))
        else:
            rng = [rng_state(device)]
        if not master:
            return
        common = {'model_name': args.model, 'config': raw.config.to_dict(), 'iter': it, 'epoch': cur_epoch,
                  'wandb_id': wandb_id, 'args': dict(vars(args)), 'metrics': metrics}
        state = {**common, 'model': raw.state_dict(), 'optimizer': optimizer.state_dict(),
                 'ema': ema.module.state_dict() if ema else None, 'ema_step': it if ema else None,
                 'scheduler': {'sched': args.lr_sched, 'iterations': args.iterations, 'lr': args.lr,
                               'warmup': args.lr_warmup, 'lrf_min': args.lrf_min},
                 'lr_scale': lr_scale, 'grad_norms': list(grad_norms), 'best_key': best_key, 'rng': rng,
                 'counters': {'bad_steps': bad_total, 'spikes': spikes_total, 'skipped_images': skipped_images}}
        if failed:
            save_checkpoint(state, os.path.join(run_dir, 'failed.pt'))
            return
        if ema:
            save_checkpoint({**common, 'model': ema.module.state_dict(), 'ema_step': it},
                            os.path.join(run_dir, 'last_ema.pt'))
        save_checkpoint(state, os.path.join(run_dir, 'last.pt'))

    def run_validation(it):
        """Rank 0 validates (the EMA weights when kept) and updates best.pt; returns the metrics."""
        nonlocal best_key
        net = ema.module if ema else raw
        t0 = time.time()
        metrics, res = validate(net, val_paths, args, anchor, device)
        raw.train()
        bd = metrics.get('val/bd_rate', float('nan'))
        key = (0, bd) if math.isfinite(bd) else (1, metrics['val/loss'])
        if better(key, best_key):
            best_key = key
            save_checkpoint({'model': net.state_dict(), 'model_name': args.model, 'config': raw.config.to_dict(),
                             'iter': it, 'wandb_id': wandb_id, 'args': dict(vars(args)), 'metrics': metrics,
                             'ema_weights': bool(ema)}, os.path.join(run_dir, 'best.pt'))
        png = plot_rd(os.path.join(run_dir, 'val_rd.png'), [(args.name, res['bpp'], res['psnr'])], anchor,
                      title=f'{args.name}: {args.valset} at iteration {it}')
        log = {**metrics, 'val/seconds': time.time() - t0}
        if args.wbmode != 'disabled':
            import wandb
            log['val/rd_curve'] = wandb.Image(png)
        wb.log(log, step=it)
        tqdm.write(f'[iter {it}] val loss {metrics["val/loss"]:.4f}  bpp {metrics["val/bpp"]:.4f}  '
                   f'psnr {metrics["val/psnr"]:.3f}  bd-rate {f"{bd:+.2f}%" if math.isfinite(bd) else "n/a"}  '
                   f'({time.time() - t0:.0f}s)')
        return metrics

    # ---- the training loop
    it, cur_epoch = start_iter, epoch
    bad_in_row = images_seen = 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == 'bf16' else nullcontext()
    bar = tqdm(total=args.iterations, initial=start_iter, disable=not master, dynamic_ncols=True,
               desc=args.name if master else None)
    if master and start_iter == 0:
        run_validation(0)
    if ddp:
        dist.barrier()
    stopped = False
    signal.signal(signal.SIGTERM, raise_interrupt)  # torchrun stops workers with SIGTERM
    t_log = t_start = time.time()
    try:
        while it < args.iterations:
            lr = current_lr(it)
            for group in optimizer.param_groups:
                group['lr'] = lr
            figures = torch.zeros(3, device=device)  # loss, bpp, psnr summed over micro-steps
            for micro in range(args.accum_num):
                cur_epoch, (im, skipped) = next(batches)
                skipped_images += int(skipped.sum())
                images_seen += len(im)
                im = im.to(device, non_blocking=True)
                sync = nullcontext() if not ddp or micro == args.accum_num - 1 else model.no_sync()
                with sync:
                    with autocast:
                        out = model(im)
                    (out['loss'] / args.accum_num).backward()
                figures += torch.tensor([out['loss'].item(), out['bppix'], out['psnr']], device=device)
            figures /= args.accum_num
            if ddp:
                dist.all_reduce(figures)  # a non-finite loss on any rank reaches every rank
                figures /= world
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), args.grad_clip or float('inf'))
            grad_norm = float(grad_norm)  # identical on all ranks: gradients are all-reduced
            loss, bpp, psnr = figures.tolist()
            status = classify_update(loss, grad_norm, grad_norms)
            bad_in_row = bad_in_row + 1 if status == 'non-finite' else 0
            if status == 'non-finite':
                bad_total += 1
            elif status == 'spike':
                spikes_total, lr_scale = spikes_total + 1, lr_scale * SPIKE_LR_CUT
            else:
                grad_norms.append(grad_norm)
                optimizer.step()
                if ema is not None:
                    ema.update(raw, step=it + 1)
            optimizer.zero_grad(set_to_none=True)
            if status != 'ok':
                tqdm.write(f'[iter {it}] skipped the update: {status} (loss {loss:.4g}, grad norm {grad_norm:.4g})'
                           + (f'; LR scale now {lr_scale:g}' if status == 'spike' else ''))
            if bad_in_row >= args.max_bad_steps:
                checkpoint(it, failed=True)
                if master:
                    print(f'error: {bad_in_row} non-finite losses in a row at iteration {it} (lr {lr:.3g}); '
                          f'stopping. The failing state is in {os.path.join(run_dir, "failed.pt")}; last.pt '
                          f'holds the last checkpoint. Try a lower --lr, --grad_clip or --amp none.',
                          file=sys.stderr)
                stopped = True
                break
            it += 1
            bar.update(1)
            if master and (it % args.log_interval == 0 or it == args.iterations):
                log = {'train/loss': loss, 'train/bpp': bpp, 'train/psnr': psnr, 'train/lr': lr,
                       'train/grad_norm': grad_norm, 'train/epoch': cur_epoch,
                       'train/sec_per_iter': (time.time() - t_log) / args.log_interval,
                       'train/skipped_images': skipped_images, 'train/bad_steps': bad_total,
                       'train/grad_spikes': spikes_total}
                t_log = time.time()
                post = {'loss': f'{loss:.4f}', 'bpp': f'{bpp:.3f}', 'psnr': f'{psnr:.2f}', 'lr': f'{lr:.2e}',
                        'gnorm': f'{grad_norm:.3g}'}
                if device.type == 'cuda':
                    log['train/peak_mem_gb'] = torch.cuda.max_memory_allocated(device) / 2**30
                    post['mem'] = f'{log["train/peak_mem_gb"]:.1f}G'
                bar.set_postfix(post)
                wb.log(log, step=it)
            validate_now = it % args.eval_interval == 0 or it == args.iterations
            if validate_now or (args.save_interval and it % args.save_interval == 0):
                metrics = run_validation(it) if master and validate_now else None
                checkpoint(it, metrics)
                if ddp:
                    dist.barrier()
    except KeyboardInterrupt:
        if master:
            print(f'\ninterrupted at iteration {it}; resume from the last checkpoint with --resume {run_dir}',
                  file=sys.stderr)
        stopped = True
    bar.close()
    seconds = time.time() - t_start
    print(f'rank {rank}/{world}: {it - start_iter} updates on {images_seen} images this session in {seconds:.0f} s '
          f'({images_seen / max(seconds, 1e-9):.1f} images/s, validation and checkpoints included)', flush=True)
    if master:
        wb.finish()
        if not stopped:
            print(f'done: {it} iterations; {bad_total} non-finite steps and {spikes_total} gradient spikes '
                  f'skipped, {skipped_images} unreadable images skipped; checkpoints in {run_dir}')
    if ddp:
        dist.destroy_process_group()
    return EXIT_BAD_STEPS if bad_in_row >= args.max_bad_steps else (130 if stopped else 0)


if __name__ == '__main__':
    sys.exit(main())
