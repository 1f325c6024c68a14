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
import sys

from lvae.cli import FlagParser
from lvae.training.recipe import INITS, KL_WARMUP_SCOPES
# The rest (torch with it) is imported once the flags are parsed: --help answers at once.

# Flags that define a run: on --resume they come from its last.pt, and another value given is an error. Every
# other flag may change on --resume (--iterations to extend a run, --lr after a failure, --valset, ...): the
# change is printed and recorded in the run's checkpoints (flag_changes).
RUN_DEFINING = ('model', 'model_args', 'weights', 'trainset', 'transform', 'batch_size', 'accum_num', 'ema',
                'fixseed', 'seed', 'wbproject', 'name')


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
    g.add_argument('--kl_warmup', type=int, default=0, help='weigh the rate by min(1, (t + 1) / N) in the loss of '
                   'update t (0: off, the paper\'s objective throughout)')
    g.add_argument('--kl_warmup_scope', choices=KL_WARMUP_SCOPES, default='all', help="whose KL the warm-up "
                   "weighs: every latent's, or 'coarse': all but the finest stage's (those pay in full throughout)")
    g.add_argument('--kl_balance', type=int, default=0, help="for the first N updates, NVAE's balancing of the "
                   "latents' KL: one that carries little pays little until it is used (0: off)")
    g.add_argument('--free_bits', type=float, default=0.0, help="free bits: a latent's batch-mean KL below this many "
                   'nats per element costs nothing, for the first --free_bits_until updates (0: off)')
    g.add_argument('--free_bits_until', type=int, default=0, help='the updates --free_bits lasts')
    g.add_argument('--init', choices=INITS, default='default', help="a new model's initialisation: 'unit-gain' "
                   "keeps the signal's variance across the stages (lvae.training.init)")
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
    """The typed settings of parsed flags: a ValueError (UsageError) naming a bad flag."""
    from lvae.training.settings import RunSettings
    return RunSettings.from_flags(vars(args))


def resolve(parser, argv, procs):
    """Before the rendezvous, on every rank: the run's settings (a continued run's saved flags, with the changes
    given now: see :data:`RUN_DEFINING`) and ``(folder, last.pt, changes)`` of the run it continues (None, None, {}
    for a new run; a None last.pt for a restarted run that died before its first checkpoint)."""
    from lvae.training.runs import check_iterations, check_last_pt, continued_run, load_run, resume_flags
    from lvae.training.settings import RunSettings
    args = parser.parse_args(argv)
    settings = check_args(args)
    folder = continued_run(args.resume, args.name, procs, os.path.join(args.runs_root, args.wbproject))
    ckpt = load_run(folder) if folder and os.path.exists(os.path.join(folder, 'last.pt')) else None
    changes = {}
    if ckpt:
        check_last_pt(folder, ckpt)
        flags, changes = resume_flags(ckpt['args'], explicit_flags(parser, argv), vars(parser.parse_args([])),
                                      RUN_DEFINING)
        settings = RunSettings.from_flags({**flags, 'resume': folder})
        if args.resume:  # asked for (a torchrun restart of a finished run just finds it finished)
            check_iterations(folder, ckpt, settings.recipe.iterations)
    return settings, (folder, ckpt, changes)


# ------------------------------------------------------------------------------------------------ main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = get_parser()
    parser.parse_args(argv)  # --help, or a mistyped flag, before torch is imported
    from lvae.training.distributed import Processes
    from lvae.training.run import TrainingRun
    procs = Processes.from_env()
    try:
        settings, resumed = resolve(parser, argv, procs)  # a bad flag stops every rank at once
        run = TrainingRun.start(settings, procs, resumed)       # checks, data, model, then the folder's claim
    except (ValueError, FileNotFoundError) as e:                # UsageError, bad data or weights: nothing claimed
        if procs.master:
            print(f'error: {e}', file=sys.stderr)
        return 2
    with run:  # a stop, a second Ctrl-C or a full disk end the run here, each with its message and status
        run.begin()           # last.pt of iteration 0, the first validation
        while run.running():
            run.update()      # one update; its checkpoint and validation when due
    return run.status


if __name__ == '__main__':
    sys.exit(main())
