"""Train a variable-rate R(D) bound model (Duan et al., ICIP 2023) with the paper's recipe (lvae.training).

One process per device. Examples (docs/training.md has the rest)::

    python train-var-rate.py --model rd_model_base                           # one GPU (or CPU)
    torchrun --nproc_per_node 4 train-var-rate.py --model rd_model_base      # DDP on 4 GPUs
    python train-var-rate.py --model rd_model_tiny --trainset ../shared/datasets/photos \
        --valset ../shared/datasets/kodak --iterations 200 --batch_size 4 --device cpu   # CPU demo
    python train-var-rate.py --resume rd_model_base_1                        # continue a run

``--batch_size`` is per process and micro-step: one update sees batch_size * accum_num * world_size images.
Each run lives in ``<runs_root>/<wbproject>/<name>/`` (lvae.training.runs). Workers restarted by
``torchrun --max-restarts`` continue their run from last.pt; SIGTERM or Ctrl-C finishes the update, writes
last.pt and exits with 128 + the signal; --max_bad_steps non-finite updates in a row write failed.pt and exit 3.
"""
import argparse
import copy
import os
import secrets
import signal
import sys

from tqdm import tqdm

import lvae
from lvae import accel
from lvae.cli import FlagParser
from lvae.data import parse_transform
from lvae.evaluation import as_test_set
from lvae.models import model_from_checkpoint, parse_model_args, registered_config
from lvae.training import Recipe, Trainer
from lvae.training.data import endless_batches, training_set
from lvae.training.distributed import Processes
from lvae.training.logs import Progress, RunLog, check_wandb_login, describe
from lvae.training.runs import (RunClaim, RunState, UsageError, check_last_pt, continue_run, continued_run, load_run,
                                prepare_run_folder, repair_last_ema, resume_flags, save_checkpoints, seed_everything,
                                write_args)
from lvae.training.signals import StopRequested, StopSignals
from lvae.training.validation import run_validation

EXIT_BAD_STEPS = 3  # exit status after --max_bad_steps non-finite losses in a row
EXIT_IO = 74        # a checkpoint or run file could not be written (sysexits' EX_IOERR)
ELASTIC_WAIT = 60   # seconds a restarted torchrun worker waits for the dead worker group's hold on the run folder
# Flags that define a run: on --resume they come from its last.pt, and another value given is an error. Every
# other flag may change on --resume (--iterations to extend a run, --lr after a failure, --valset, ...): the
# change is printed and recorded in the run's checkpoints (flag_changes).
RUN_DEFINING = ('model', 'model_args', 'weights', 'trainset', 'transform', 'batch_size', 'accum_num', 'ema',
                'fixseed', 'seed', 'wbproject', 'name')
VALIDATION_FLAGS = {'valset', 'val_steps', 'val_images'}


# ------------------------------------------------------------------------------------------------ flags
def get_parser():
    p = FlagParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', default='rd_model_base', help='zoo model name (lvae.list_models())')
    g.add_argument('--model_args', default='', help="config overrides as Python literals, e.g. "
                   "\"lmb_range=(4,2048)\" (parsed with ast.literal_eval, never evaluated)")
    g.add_argument('--weights', default=None, help='initialise from these weights (file or URL)')
    g = p.add_argument_group('data')
    g.add_argument('--trainset', default='coco-train2017', help='training folder, known dataset name, or a source '
                   'with a known R(D) (gaussian-64: fresh draws)')
    g.add_argument('--transform', default='crop=256,hflip=True',
                   help='random crop size (reflect padding for smaller images) and horizontal flip')
    g.add_argument('--valset', default='kodak', help='validation folder, known dataset name, or a source (its '
                   'held-out sample, validated against the true R(D))')
    g.add_argument('--val_steps', type=int, default=8, help='validation lambdas, log-spaced over lmb_range')
    g.add_argument('--val_images', type=int, default=0, help='validate on the first N images only (0: all)')
    g.add_argument('--workers', type=int, default=4, help='DataLoader workers per process')
    g = p.add_argument_group('optimisation')
    g.add_argument('--batch_size', type=int, default=16, help='images per process and micro-step')
    g.add_argument('--accum_num', type=int, default=1, help='micro-steps (gradient accumulation) per update')
    g.add_argument('--iterations', type=int, default=200_000, help='optimizer updates in total')
    g.add_argument('--lr', type=float, default=2e-4, help='Adam learning rate')
    g.add_argument('--lr_sched', default='const-0.5-cos',
                   help="'const-F-cos' (constant for a fraction F of the run, then cosine), 'const' or 'cos'")
    g.add_argument('--lrf_min', type=float, default=0.01, help='final LR as a fraction of --lr')
    g.add_argument('--lr_warmup', type=int, default=0, help='linear LR warm-up iterations')
    g.add_argument('--grad_clip', type=float, default=2.0, help='gradient-norm clipping (0: off)')
    g.add_argument('--max_bad_steps', type=int, default=5, help='stop after this many non-finite losses in a row')
    g.add_argument('--ema', action=argparse.BooleanOptionalAction, default=True, help='keep EMA weights')
    g.add_argument('--ema_decay', type=float, default=0.9999, help='EMA decay (reached after a warm-up)')
    g.add_argument('--ema_warmup', type=int, default=10_000, help='EMA decay ema_decay * (1 - exp(-t / '
                   'ema_warmup)) at iteration t (0: iterations // 20)')
    g.add_argument('--amp', choices=('none', 'bf16'), default='none', help='autocast precision')
    g.add_argument('--compile', action='store_true', help='torch.compile the ConvNeXt blocks')
    g.add_argument('--fixseed', action='store_true', help='seed everything (rank r uses seed + r)')
    g.add_argument('--seed', type=int, default=0, help='base seed with --fixseed')
    g.add_argument('--device', default='auto', help="'auto' (cuda when present), 'cuda' or 'cpu'")
    g = p.add_argument_group('logging and checkpoints')
    g.add_argument('--name', default=None, help='run name (default: <model>_<n>, n incrementing)')
    g.add_argument('--runs_root', default='runs', help='runs live in <runs_root>/<wbproject>/<name>/')
    g.add_argument('--resume', default=None, help='run folder or name to continue: its flags come from its last.pt; '
                   'those that define the run cannot change, others given now are recorded as changes')
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


def check_args(args):
    """Check the flags (ValueError naming the flag) and parse the structured ones; returns ``args``."""
    for name in ('batch_size', 'eval_interval', 'log_interval', 'val_steps', 'max_bad_steps'):
        if getattr(args, name) < 1:
            raise UsageError(f'--{name} must be >= 1, got {getattr(args, name)}')
    for name in ('workers', 'val_images', 'save_interval'):
        if getattr(args, name) < 0:
            raise UsageError(f'--{name} must be >= 0, got {getattr(args, name)}')
    if args.model not in lvae.list_models():
        raise UsageError(f'unknown model {args.model!r}; known: {", ".join(lvae.list_models())}')
    Recipe.from_flags(args)
    args.transform_kw, args.model_kw = parse_transform(args.transform), parse_model_args(args.model_args)
    return args


def resolve_flags(parser, argv, procs):
    """Before the rendezvous, on every rank: the checked flags (a continued run's saved ones, with the changes given
    now: see :data:`RUN_DEFINING`), the continued run's folder and last.pt (None, None for a new run; None for the
    checkpoint of a restarted run that died before its first one), and the flags changed."""
    args = check_args(parser.parse_args(argv))
    folder = continued_run(args, procs, os.path.join(args.runs_root, args.wbproject))
    ckpt = load_run(folder) if folder and os.path.exists(os.path.join(folder, 'last.pt')) else None
    changes = {}
    if ckpt:
        check_last_pt(folder, ckpt)
        flags, changes = resume_flags(ckpt['args'], explicit_flags(parser, argv), vars(parser.parse_args([])),
                                      RUN_DEFINING)
        args = check_args(argparse.Namespace(**{**flags, 'resume': folder}))
    return args, folder, ckpt, changes


def claim_folder(args, folder, ckpt, procs):
    """Rank 0 claims the run's folder (lvae.training.runs.RunClaim): a new one, or the one it continues (a restarted
    torchrun worker waits for the dead group's hold to go). Returns ``(claim, folder)``: the claim on rank 0
    (None elsewhere), the folder on every rank."""
    def claim():
        if folder:
            identity = {'model': args.model, 'config': ckpt['config'] if ckpt else
                        registered_config(args.model, args.model_kw), 'created': None}
            return RunClaim.existing(folder, identity, wait=ELASTIC_WAIT if procs.restarts else 0)
        return RunClaim.new(os.path.join(args.runs_root, args.wbproject), args.name, args.model,
                            registered_config(args.model, args.model_kw), procs.run_id)
    held = procs.on_master(claim)
    return held, procs.broadcast(held.folder if held else None)


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser, procs = get_parser(), Processes.from_env()
    try:
        args, folder, ckpt, changes = resolve_flags(parser, argv, procs)  # a bad flag stops every rank at once
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    device = procs.init(args.device)
    claim = None
    try:
        procs.from_master(lambda: check_wandb_login(args))
        trainset = training_set(args.trainset, **args.transform_kw)
        if max(1, len(trainset) // procs.world) < args.batch_size:
            raise UsageError(f'{len(trainset)} training images cannot fill one batch of {args.batch_size} per '
                             f'process on {procs.world} process(es)')
        valset = procs.on_master(lambda: as_test_set(args.valset, progress=False))  # decoded once, on rank 0
        claim, folder = claim_folder(args, folder, ckpt, procs)  # last: a bad flag leaves no folder behind
        args.name = os.path.basename(os.path.normpath(folder))
    except (ValueError, FileNotFoundError) as e:
        if procs.master:
            print(f'error: {e}', file=sys.stderr)
        if claim:
            claim.release()
        procs.close()
        return 2
    if args.fixseed:
        seed_everything(args.seed + procs.rank)
    if ckpt:
        model, _ = model_from_checkpoint(ckpt)
    else:
        model = lvae.get_model(args.model, pretrained=args.weights or False, **args.model_kw)
    trainer = Trainer(accel.prepare(model, device, compile=args.compile).train(), Recipe.from_flags(args))
    run = continue_run(ckpt, trainer, procs, device, args.seed, changes) if ckpt else RunState()
    batches = endless_batches(trainset, args.batch_size, procs.rank, procs.world, args.seed, args.workers,
                              pin_memory=device.type == 'cuda', epoch=run.epoch)
    log = None
    try:
        if procs.master:
            prepare_run_folder(folder, procs.run_id)
            if ckpt:
                repair_last_ema(folder, ckpt)
            run.wandb_id = run.wandb_id or secrets.token_hex(4)  # fixed before wandb starts: a resumed run keeps it
            write_args(folder, args)
            legacy_best = ckpt.get('best_key') if ckpt and not VALIDATION_FLAGS & changes.keys() else None
            log = RunLog(args, folder, valset, run.wandb_id, legacy_best)
            print(describe(args, trainer, procs, device, trainset, folder, ckpt is not None, changes), flush=True)
    except OSError as e:
        print(f'error: cannot write to the run folder {folder}: {e}', file=sys.stderr)
        batches.close()
        claim.release()
        procs.close()
        return EXIT_IO
    progress = Progress(args, trainer, procs, log.wb if log else None)
    status, saved = None, trainer.iter if ckpt else None
    try:
        with StopSignals() as stop:  # from here on a stop ends the run cleanly, during the first validation too

            def checkpoint(name='last.pt'):
                with stop.shielded():
                    save_checkpoints(folder, args, trainer, run, procs, device, name=name)

            def validate_if_due():
                """Rank 0 validates an iteration due for it, unless done (a stop abandons it at once: it is redone on
                resume); every rank waits."""
                it = trainer.iter
                if procs.master and (it == 0 or it % args.eval_interval == 0 or it == args.iterations) \
                        and not log.record.done(it):
                    try:
                        run_validation(folder, args, trainer, run, log, device, stop)
                    except StopRequested:
                        tqdm.write(f'validation of iteration {it} abandoned: it is redone on --resume')
                procs.barrier()

            if saved is None:
                checkpoint()  # last.pt of iteration 0: a stop during the first validation leaves a run to resume
                saved = trainer.iter
            validate_if_due()
            while trainer.iter < args.iterations and not procs.any(stop.requested):
                micro = []
                for _ in range(args.accum_num):
                    run.epoch, (im, skipped) = next(batches)
                    run.skipped_images += skipped.sum()
                    micro.append(im)
                out = trainer.step(micro)
                progress.step(trainer, run, out, sum(len(im) for im in micro), device)
                if progress.log_due(trainer.iter) and int(trainer.counters['longest_bad_run']) >= args.max_bad_steps:
                    checkpoint('failed.pt')
                    if procs.master:
                        print(f'\nerror: {args.max_bad_steps} non-finite losses in a row by iteration {trainer.iter} '
                              f'(lr {float(out["lr"]):.3g}); stopping. The failing state is in '
                              f'{os.path.join(folder, "failed.pt")}; last.pt holds the last checkpoint. Try a lower '
                              f'--lr, --grad_clip or --amp none.', file=sys.stderr)
                    status = EXIT_BAD_STEPS
                    break
                if trainer.iter % args.eval_interval == 0 or trainer.iter == args.iterations or (
                        args.save_interval and trainer.iter % args.save_interval == 0):
                    checkpoint()  # last.pt first, then the validation: a failure there leaves this iteration's
                    saved = trainer.iter
                    validate_if_due()
            if status is None and procs.any(stop.requested):
                if saved != trainer.iter:
                    checkpoint()
                signum = stop.signum or signal.SIGTERM
                if procs.master:
                    print(f'\nstopped by {signal.Signals(signum).name} at iteration {trainer.iter}: last.pt holds it; '
                          f'continue with --resume {folder}', file=sys.stderr)
                status = 128 + signum
    except KeyboardInterrupt:  # a second Ctrl-C
        if procs.master:
            print(f'\ninterrupted at iteration {trainer.iter}; resume from the last checkpoint with --resume '
                  f'{folder}', file=sys.stderr)
        status = 130
    except OSError as e:  # a full disk, an unwritable run folder: the previous last.pt is intact
        if procs.master:
            then = (f'last.pt holds iteration {saved}: free some space (or fix the folder), then continue with '
                    f'--resume {folder}') if saved is not None else \
                f'no checkpoint was written: free some space, remove {folder} and start again'
            print(f'\nerror: {e}; {then}', file=sys.stderr)
        status = EXIT_IO
    finally:
        batches.close()  # the loader's workers leave signals to us (lvae.training.data.endless_batches): end them here
        if claim:
            claim.release()
    progress.close(trainer, run, status is None, folder)
    if log:
        log.wb.finish()
    procs.close()
    return status or 0


if __name__ == '__main__':
    sys.exit(main())
