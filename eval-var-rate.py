"""Evaluate the R(D) upper bound of a variable-rate model on a dataset: JSON + R-D plot + BD-rate table.

Examples::

    python eval-var-rate.py                                    # rd_model_small's registered weights on Kodak
    python eval-var-rate.py --model rd_model_base --dataset_name tecnick-rgb-1200 --bpp-pixels padded
    python eval-var-rate.py --weights runs/lvae/my_run/last_ema.pt --dataset_name /data/my-photos \\
        --anchor results/jpeg-my-photos.json
    python eval-var-rate.py --model rd_model_tiny --random-init --steps 4   # smoke test, meaningless numbers
    torchrun --nproc_per_node 8 eval-var-rate.py --model rd_model_base --refine auto   # the images over 8 GPUs
    python eval-var-rate.py --refine auto --shard 3/10 ...; then the same without --shard   # a job array
"""
import argparse
import sys

from lvae.cli import FlagParser, Interrupted, interruptible
from lvae.evaluation.choices import (AUTO_LR, BPP_PIXELS, DEFAULT_ANCHOR, DEFAULT_MODEL, FIXED_LR, NOISE, TRUE_RD,
                                     lambdas_per_forward, refine_steps)
# The rest (torch with it) is imported in main(), once the flags are parsed: --help answers at once.

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
                   f"{FIXED_LR} for STEPS; where 'auto' starts, {AUTO_LR})")
    g.add_argument('--refine-chain', action='store_true', help="with --refine auto: each image's lambdas in "
                   'ascending order, each from the refined posteriors below it, the last window averaged (0.46x '
                   'the passes at 16 lambdas, the same loss; one lambda per pass: docs/evaluation.md)')
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
    g.add_argument('--shard', default=None, metavar='K/N', help='evaluate the K-th of N contiguous parts of the images '
                   'into its own journal (a job array; torchrun splits by rank by itself); the same command without '
                   '--shard then writes the result from the journals (docs/evaluation.md, "Spreading an evaluation")')
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


def main(argv=None):
    args = get_args(argv)
    from lvae.evaluation import InvalidImagesError, as_test_set, lambda_grid
    from lvae.evaluation.anchors import resolve_anchor_curve
    from lvae.evaluation.flags import check_flags, model_of, part_of, settings_of
    from lvae.evaluation.journal import Journal
    from lvae.evaluation.outputs import (check_outside, check_output, check_settings, default_output, journal_path,
                                         journals_beside, output_lock)
    from lvae.evaluation.report import partial_note
    from lvae.ranks import Ranks
    ranks = Ranks.from_env()  # torchrun's ranks split the images as parts of one evaluation
    out, journal = args.output, None
    try:
        with interruptible():
            check_flags(args)
            part = part_of(args, ranks)
            if out:
                check_output(out)  # at once, before the model and the images are read
            loaded = model_of(args, warn=ranks.master)
            test = as_test_set(args.dataset_name, progress=not args.no_progress)  # every file decoded, once
            if test.partial and ranks.master:
                print(f'warning: {partial_note(test)}', file=sys.stderr)
            if args.anchor:
                resolve_anchor_curve(args.anchor, test.name, missing_ok=True)  # a bad --anchor fails before the work
            if test.skipped and not args.skip_invalid:
                raise InvalidImagesError(test.skipped)
            name = args.name or loaded.name
            if not out:
                out = default_output(name, test.name, f'{args.refine}-chain' if args.refine_chain else args.refine,
                                     args.samples, args.seed, args.bpp_pixels)
                check_output(out)
            check_outside(out, test.folder)  # outputs are never read as inputs
            lambdas = lambda_grid(args.lmb_range or loaded.model.config.lmb_range, args.steps)
            with output_lock(out, part):  # the check and the work under one lock: no other run between them
                check_settings(out, settings_of(args, loaded, test, lambdas), args.overwrite)
                journal = Journal(journal_path(out, part), discard_other=args.overwrite, others=journals_beside(out),
                                  part=part)
                return evaluate(args, ranks, part, loaded, test, name, lambdas, out, journal)
    except Interrupted as e:
        done = len(journal.entries) if journal is not None else 0
        kept = f'{done} finished image(s) kept in {journal.path}: the same command resumes' if done else \
            'nothing written'
        print(f'\ninterrupted by {e.name}: {kept}{f" ({out} is as it was)" if out else ""}', file=sys.stderr)
        return 128 + e.signum
    except (ValueError, OSError, RuntimeError) as e:  # bad input, file or download: a message, no traceback
        print(f'error: {e}', file=sys.stderr)
        return 2


def evaluate(args, ranks, part, loaded, test, name, lambdas, out, journal):
    """The bound of this process's images (all, or its part's), each kept in ``journal`` as it is done or taken
    from the journals beside ``out``; a shard stops there. The whole result (under torchrun, rank 0's, from the
    figures the ranks gather once all are done) is printed, its JSON and plot written, and the journals removed."""
    import lvae
    from lvae.accel.memory import reuse_freed_memory
    from lvae.evaluation import compile_for_eval, evaluate_bound
    from lvae.evaluation.flags import bound_settings
    from lvae.evaluation.report import publish
    from lvae.evaluation.shards import agree, gather, part_done
    settings = bound_settings(args, ranks)
    if args.device is None and settings['device'].type == 'cpu' and ranks.master:
        print('note: no CUDA device found, evaluating on the CPU (slow for large models)', file=sys.stderr)
    if settings['device'].type == 'cpu':
        reuse_freed_memory()  # no page faults for every activation (lvae.accel.memory)
    model = loaded.model.to(settings['device']).eval()
    compiled = compile_for_eval(model) if args.compile else False
    if part is not None:
        done = evaluate_bound(model, test, lambdas, journal=journal, part=part, **settings)
        if not ranks.ddp:
            print(part_done(part, done, journal, len(test)))
            return 0
        figures = gather(ranks, done['figures'])
        if ranks.master:
            journal.take(figures)
    written = False
    try:
        if ranks.master:
            result = evaluate_bound(model, test, lambdas, journal=journal, **settings)
            spread = {'processes': ranks.world} if ranks.ddp else {}
            publish(out, result, test, args.anchor, name, model, loaded,
                    {'compile': compiled, 'lvae': lvae.__version__, **spread})
        written = True
    finally:
        written = agree(ranks, written) if ranks.ddp else written  # rank 0's failure, if any, is what it prints
    if not written:
        print('rank 0 wrote no result: the journals are kept, the same command resumes', file=sys.stderr)
        return 1
    journal.remove()
    return 0


if __name__ == '__main__':
    sys.exit(main())
