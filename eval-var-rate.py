"""Evaluate the R(D) upper bound of a variable-rate model on a dataset: JSON + R-D plot + BD-rate table.

Examples::

    python eval-var-rate.py                                    # rd_model_small's registered weights on Kodak
    python eval-var-rate.py --model rd_model_base --dataset_name tecnick-rgb-1200 --bpp-pixels padded
    python eval-var-rate.py --weights runs/lvae/my_run/last_ema.pt --dataset_name /data/my-photos \\
        --anchor results/jpeg-my-photos.json
    python eval-var-rate.py --model rd_model_tiny --random-init --steps 4   # smoke test, meaningless numbers
"""
import argparse
import math
import sys

import torch

import lvae
from lvae.accel.memory import reuse_freed_memory
from lvae.cli import FlagParser, Interrupted, interruptible
from lvae.evaluation import (BPP_PIXELS, NOISE, InvalidImagesError, as_test_set, compile_for_eval, default_device,
                             evaluate_bound, lambda_grid)
from lvae.evaluation.anchors import DEFAULT_ANCHOR, TRUE_RD, resolve_anchor_curve
from lvae.evaluation.refine import AUTO, FIXED_LR, Convergence, Refinement
from lvae.evaluation.journal import Journal
from lvae.evaluation.outputs import (check_output, check_settings, default_output, journal_path, output_lock,
                                     write_pair)
from lvae.evaluation.report import partial_note, plot_result, report, result_record
from lvae.evaluation.results import json_text
from lvae.models import load_model, parse_model_args

DEFAULT_MODEL = 'rd_model_small'


def lambdas_per_forward(text):
    """--lmb-batch: 'auto' or a positive integer."""
    if text == 'auto' or (text.isdigit() and int(text) > 0):
        return text if text == 'auto' else int(text)
    raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")


def refine_steps(text):
    """--refine: a number of steps (checked >= 0 with the other flags), or 'auto'."""
    if text == AUTO or text.lstrip('-').isdigit():
        return text if text == AUTO else int(text)
    raise argparse.ArgumentTypeError(f"expected a number of steps >= 0 or 'auto', got {text!r}")


def get_args(argv=None):
    p = FlagParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', default=None, help=f'registered model name (default: {DEFAULT_MODEL}; with --weights '
                   "of a checkpoint that records its config, the checkpoint's model, which --model must then match)")
    g.add_argument('--model_args', default='', help='config overrides as comma-separated Python literals, '
                   'e.g. "lmb_range=(16,1024)" (parsed, never evaluated)')
    w = g.add_mutually_exclusive_group()
    w.add_argument('--weights', default=None, metavar='PATH_OR_URL',
                   help="checkpoint; one that records its 'config' rebuilds the model by itself, otherwise "
                        'the weights are loaded into --model')
    w.add_argument('--pretrained', action='store_true',
                   help="the model's registered weights (an error if it has none); the default when --weights is "
                        'not given, where a model without registered weights is evaluated untrained, with a warning')
    w.add_argument('--random-init', action='store_true', help='evaluate an untrained model (smoke tests)')
    g = p.add_argument_group('evaluation')
    g.add_argument('--dataset_name', default='kodak', help='known dataset name, image folder, or a source with a '
                   'known R(D) (gaussian-64: its held-out sample, against the truth; default: kodak)')
    g.add_argument('--lmb_range', type=float, nargs=2, default=None, metavar=('LOW', 'HIGH'),
                   help="lambdas log-spaced over this range (default: the model's lmb_range)")
    g.add_argument('--steps', type=int, default=16, help='number of lambdas (default: %(default)s)')
    g.add_argument('--bpp-pixels', choices=BPP_PIXELS, default='original',
                   help="divide bits by the original pixel count (correct, default) or by the padded one "
                        "(the authors' code)")
    g.add_argument('--samples', type=int, default=1, help='posterior draws per image and lambda (default: 1)')
    g.add_argument('--seed', type=int, default=0, help='seed of the posterior draws (and of --random-init weights; '
                   'default: 0)')
    g.add_argument('--skip-invalid', action='store_true', help='skip unreadable files (listed) instead of stopping')
    g.add_argument('--refine', type=refine_steps, default=0, metavar='STEPS|auto', help="refine each image's "
                   'posterior at each lambda by STEPS Adam steps on its own KL + lambda * distortion, or until it '
                   "converges ('auto'), the decoder and prior fixed: a tighter bound from the same weights "
                   '(docs/evaluation.md; default: 0, the plain bound)')
    g.add_argument('--refine-lr', type=float, default=None, help=f'learning rate of the refinement (default: '
                   f"{FIXED_LR} for STEPS; where 'auto' starts, {Convergence.lr})")
    g = p.add_argument_group('speed')
    g.add_argument('--device', default=None, help='cuda, cuda:1, cpu, ... (default: cuda if present, else cpu)')
    g.add_argument('--amp', choices=('bf16',), default=None, help='bf16 autocast (default: fp32)')
    g.add_argument('--noise', choices=NOISE, default='device', help="where the posterior draws are made: on the "
                   "model's device (default, fast) or on CPU generators (the same draws on every device)")
    g.add_argument('--tf32', action='store_true', help='CUDA: fp32 matmuls and convolutions in TF32 (default: strict '
                   'fp32; benchmarks/RESULTS.md gives the effect on the bound)')
    g.add_argument('--compile', action='store_true', help='torch.compile the ConvNeXt blocks (compiling '
                   'rd_model_base took over 110 s on an H100: for large datasets)')
    g.add_argument('--lmb-batch', default='auto', type=lambdas_per_forward,
                   help="lambdas per forward: 'auto' or an integer")
    g = p.add_argument_group('output')
    g.add_argument('--output', default=None, metavar='JSON',
                   help='results file (default: runs/eval/<name>-<dataset>[-<settings>].json, the settings that '
                        'differ from the defaults in the name); the PNG goes next to it')
    g.add_argument('--overwrite', action='store_true', help='replace a result of other settings at the output')
    g.add_argument('--name', default=None, help="curve name in the JSON and plot (default: the model's)")
    g.add_argument('--anchor', default=None,
                   help=f'BD-rate reference: a shipped codec (default: {DEFAULT_ANCHOR}; on a source, {TRUE_RD}, its '
                        'exact R(D)) or an anchor JSON (python -m lvae.anchors)')
    g.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def load(args, overrides):
    """The model of the flags (:func:`lvae.models.load_model`), with a warning for an untrained one."""
    pretrained = True if args.pretrained else False if args.random_init else None
    loaded = load_model(args.model or (None if args.weights else DEFAULT_MODEL), weights=args.weights,
                        pretrained=pretrained, overrides=overrides, seed=args.seed)
    if loaded.untrained and not args.random_init:
        print(f'warning: no weights are registered for {loaded.name}: evaluating an UNTRAINED model (random '
              f'weights, --seed {args.seed}); its numbers mean nothing. Pass --weights PATH_OR_URL for a trained '
              f'one.', file=sys.stderr)
    return loaded


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
    if args.lmb_range is not None:
        low, high = args.lmb_range
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise ValueError(f'--lmb_range takes LOW HIGH with 0 < LOW <= HIGH, both finite, got {low} {high}')
        if low == high and args.steps > 1:
            raise ValueError(f'--lmb_range {low:g} {high:g} is one lambda: it makes one point, not a curve of '
                             f'--steps {args.steps}; widen the range or pass --steps 1')


def main(argv=None):
    args = get_args(argv)
    out, journal = args.output, None
    try:
        with interruptible():
            check_flags(args)
            if out:
                check_output(out)  # at once, before the model and the images are read
            loaded = load(args, parse_model_args(args.model_args))
            test = as_test_set(args.dataset_name, progress=not args.no_progress)  # every file decoded, once
            if test.partial:
                print(f'warning: {partial_note(test)}', file=sys.stderr)
            if args.anchor:
                resolve_anchor_curve(args.anchor, test.name, missing_ok=True)  # a bad --anchor fails before the work
            if test.skipped and not args.skip_invalid:
                raise InvalidImagesError(test.skipped)
            name = args.name or loaded.name
            if not out:
                out = default_output(name, test.name, args.refine, args.samples, args.seed, args.bpp_pixels)
                check_output(out)
            lambdas = lambda_grid(args.lmb_range or loaded.model.config.lmb_range, args.steps)
            check_settings(out, settings_of(args, loaded, test, lambdas), args.overwrite)
            with output_lock(out):
                journal = Journal(journal_path(out), discard_other=args.overwrite)
                return evaluate(args, loaded, test, name, lambdas, out, journal)
    except Interrupted as e:
        done = len(journal.entries) if journal is not None else 0
        kept = f'{done} finished image(s) kept in {journal.path}: the same command resumes' if done else \
            'nothing written'
        print(f'\ninterrupted by {e.name}: {kept}{f" ({out} is as it was)" if out else ""}', file=sys.stderr)
        return 128 + e.signum
    except (ValueError, OSError, RuntimeError) as e:  # bad input, file or download: a message, no traceback
        print(f'error: {e}', file=sys.stderr)
        return 2


def settings_of(args, loaded, test, lambdas):
    """What the result will record of the settings that change its numbers (lvae.evaluation.outputs.SETTINGS)."""
    return {'model': loaded.name, 'weights_sha256': loaded.sha256, 'test-set': test.name, 'lambdas': lambdas,
            'bpp_pixels': args.bpp_pixels, 'samples': args.samples, 'seed': args.seed,
            'refine': Refinement(args.refine, args.refine_lr).record(args.seed) if args.refine else None,
            'amp': args.amp, 'noise': args.noise}


def evaluate(args, loaded, test, name, lambdas, out, journal):
    """The evaluation itself: the bound (each image's figures kept in ``journal`` as it is done, or taken from it),
    its report printed, then the JSON and its plot written together and the journal removed."""
    device = torch.device(args.device) if args.device else default_device()
    if args.device is None and device.type == 'cpu':
        print('note: no CUDA device found, evaluating on the CPU (slow for large models)', file=sys.stderr)
    if device.type == 'cpu':
        reuse_freed_memory()  # no page faults for every activation (lvae.accel.memory)
    model = loaded.model.to(device).eval()
    compiled = compile_for_eval(model) if args.compile else False
    refinement = Refinement(args.refine, args.refine_lr) if args.refine else None
    result = evaluate_bound(model, test, lambdas, device=device, bpp_pixels=args.bpp_pixels,
                            samples=args.samples, seed=args.seed, skip_invalid=args.skip_invalid,
                            lmb_batch=args.lmb_batch, amp=args.amp, tf32_ok=args.tf32, noise=args.noise,
                            progress=not args.no_progress, refine=refinement, journal=journal)
    for s in result['skipped']:
        print(f'skipped {s["file"]}: {s["reason"]}', file=sys.stderr)
    text, comparisons = report(result, test, args.anchor, name)
    record = json_text(result_record(result, test, name, model, loaded.name, loaded.weights, loaded.sha256,
                                     {**comparisons, 'compile': compiled, 'lvae': lvae.__version__}))
    print(f'{result["num_images"]} images, {len(lambdas)} lambdas, {result["seconds"]:.1f} s on {result["device"]}')
    print(text, flush=True)  # before any file is written: a failed write loses no figure

    def write_json(tmp):
        with open(tmp, 'w') as f:
            f.write(record)

    json_path, png = write_pair(out, write_json, lambda tmp: plot_result(tmp, result, test, args.anchor, name))
    journal.remove()
    print(f'wrote {json_path} and {png}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
