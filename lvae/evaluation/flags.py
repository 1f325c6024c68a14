"""The flags of eval-var-rate.py (their choices and types: lvae.evaluation.choices): their checks before anything
is read, the model they name, which part of a spread evaluation this process takes, and the settings a result
records (lvae.evaluation.outputs.SETTINGS)."""
import math
import sys

import torch

import lvae
from lvae.evaluation.bound import default_device
from lvae.evaluation.choices import AUTO, DEFAULT_MODEL
from lvae.evaluation.refine import CHAIN, Refinement
from lvae.evaluation.shards import Part, parse_shard
from lvae.models import load_model, parse_model_args


def check_flags(args):
    """The flags' values, checked before anything is read: a ValueError naming the flag and what it takes."""
    if args.steps < 1 or args.samples < 1:
        raise ValueError(f'--steps and --samples must be >= 1, got {args.steps} and {args.samples}')
    if not 0 <= args.seed < 2 ** 63:
        raise ValueError(f'--seed must be an integer in [0, 2**63), got {args.seed}')
    if args.refine != AUTO and args.refine < 0:
        raise ValueError(f"--refine: refinement needs steps >= 0 or 'auto', got {args.refine}")
    if args.refine_lr is not None and not 0 < args.refine_lr <= Refinement.max_lr:
        raise ValueError(f'--refine-lr must be a learning rate in (0, {Refinement.max_lr:g}], got {args.refine_lr}')
    if args.refine_lr is not None and not args.refine:
        raise ValueError(f"--refine-lr {args.refine_lr:g} is the rate of a refinement: give --refine STEPS or 'auto' "
                         f'with it, or leave it out')
    if args.refine_chain and args.refine != AUTO:
        raise ValueError(f"--refine-chain chains refinements to convergence: give it with --refine auto, got --refine "
                         f"{args.refine}")
    if args.output is not None and not args.output.strip():
        raise ValueError(f'--output {args.output!r} names no file: give a path such as results/kodak.json, or leave '
                         f'the flag out for runs/eval/<name>-<dataset>.json')
    if args.lmb_range is not None:
        low, high = args.lmb_range
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f'--lmb_range takes LOW HIGH with 0 < LOW <= HIGH, both finite, got {low} {high}')
        if low == high and args.steps > 1:
            raise ValueError(f'--lmb_range {low:g} {high:g} is one lambda: it makes one point, not a curve of '
                             f'--steps {args.steps}; widen the range or pass --steps 1')


def settings_of(args, loaded, test, lambdas):
    """What the result will record of the settings that change its numbers (lvae.evaluation.outputs.SETTINGS)."""
    return {'model': loaded.name, 'model_config': loaded.model.config.to_dict(), 'weights_sha256': loaded.sha256,
            'test-set': test.name, 'lambdas': lambdas, 'lvae': lvae.__version__, 'torch': torch.__version__,
            'bpp_pixels': args.bpp_pixels, 'samples': args.samples, 'seed': args.seed,
            'refine': refinement_of(args).record(args.seed) if args.refine else None,
            'amp': args.amp, 'noise': args.noise}


def refinement_of(args):
    """The :class:`~lvae.evaluation.refine.Refinement` of --refine, --refine-lr and --refine-chain."""
    return Refinement(args.refine, args.refine_lr, rule=CHAIN if args.refine_chain else None)


def part_of(args, ranks):
    """The :class:`~lvae.evaluation.shards.Part` this process evaluates: ``--shard K/N``, or its rank's under
    torchrun (:class:`lvae.ranks.Ranks`); None for the whole test set."""
    if args.shard and ranks.ddp:
        raise ValueError('--shard is for separate jobs: under torchrun each rank takes its part by itself')
    return parse_shard(args.shard) if args.shard else Part(ranks.rank, ranks.world) if ranks.ddp else None


def bound_settings(args, ranks):
    """The keyword arguments of :func:`~lvae.evaluation.evaluate_bound` that the flags give; under torchrun on
    CUDA, each rank's device is its local GPU."""
    device = torch.device(args.device) if args.device else default_device()
    if device.type == 'cuda' and device.index is None and ranks.ddp:
        device = torch.device('cuda', ranks.local_rank)
    return dict(device=device, bpp_pixels=args.bpp_pixels, samples=args.samples, seed=args.seed,
                skip_invalid=args.skip_invalid, lmb_batch=args.lmb_batch, amp=args.amp, tf32_ok=args.tf32,
                noise=args.noise, progress='lines' if args.no_progress else True,
                refine=refinement_of(args) if args.refine else None)


def model_of(args, warn=True):
    """The model of the flags (:func:`lvae.models.load_model`), with a warning for an untrained one (where ``warn``)."""
    pretrained = True if args.pretrained else False if args.random_init else None
    loaded = load_model(args.model or (None if args.weights else DEFAULT_MODEL), weights=args.weights,
                        pretrained=pretrained, overrides=parse_model_args(args.model_args), seed=args.seed)
    if loaded.untrained and not args.random_init and warn:
        print(f'warning: no weights are registered for {loaded.name}: evaluating an UNTRAINED model (random '
              f'weights, --seed {args.seed}); its numbers mean nothing. Pass --weights PATH_OR_URL for a trained '
              f'one.', file=sys.stderr)
    return loaded
