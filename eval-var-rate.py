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
import os
import sys

import torch

import lvae
from lvae.bdrate import DEFAULT_ANCHOR, TRUE_RD, bd_table, default_anchor, get_anchor, resolve_anchor_curve
from lvae.checkpoint import download, is_url, load_file, load_weights, model_from_checkpoint, sha256_file
from lvae.cli import FlagParser, parse_model_args
from lvae.evaluation import (BPP_PIXELS, NOISE, compile_for_eval, default_device, evaluate_bound, lambda_grid,
                             resolve_images)
from lvae.intervals import bd_rates, bootstrap, describe, draw_bd_rates
from lvae.memory import reuse_freed_memory
from lvae.models.rd.model import RDConfig
from lvae.models.rd.zoo import CONFIGS, PRETRAINED, WEIGHTS_DIR
from lvae.paths import dataset_name
from lvae.plotting import plot_rd
from lvae.results import (CONVENTIONS, check_writable, convention_psnr, dataset_record, per_image_figures, save_json,
                          weights_label)
from lvae.sources import excess_table, is_source, source_record

# Published curves drawn for comparison when the dataset has them (shipped in lvae/data/anchors.json).
PUBLISHED = {'yang-mandt-2022': 'previous bound (Yang & Mandt 2022)', 'qarv_base': 'QARV-base (published)',
             'qres34m': 'QRes-VAE 34M (published)'}
PREVIOUS_BOUND = 'yang-mandt-2022'  # a second BD table, against the previous bound, where it has a curve
DEFAULT_MODEL = 'rd_model_small'


def lambdas_per_forward(text):
    """--lmb-batch: 'auto' or a positive integer."""
    if text == 'auto' or (text.isdigit() and int(text) > 0):
        return text if text == 'auto' else int(text)
    raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")


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
    g.add_argument('--seed', type=int, default=0, help='seed of the posterior draws (and of --random-init weights; default: 0)')
    g.add_argument('--skip-invalid', action='store_true', help='skip unreadable files (listed) instead of stopping')
    g = p.add_argument_group('speed')
    g.add_argument('--device', default=None, help='cuda, cuda:1, cpu, ... (default: cuda if present, else cpu)')
    g.add_argument('--amp', choices=('bf16',), default=None, help='bf16 autocast (default: fp32)')
    g.add_argument('--noise', choices=NOISE, default='device',
                   help="where the posterior draws are made: on the model's device (default, fast) or on CPU generators "
                        '(the same draws on every device)')
    g.add_argument('--tf32', action='store_true', help='CUDA: fp32 matmuls and convolutions in TF32 (default: strict '
                   'fp32; benchmarks/RESULTS.md gives the effect on the bound)')
    g.add_argument('--compile', action='store_true', help='torch.compile the ConvNeXt blocks (compiling '
                   'rd_model_base took over 110 s on an H100: for large datasets)')
    g.add_argument('--lmb-batch', default='auto', type=lambdas_per_forward,
                   help="lambdas per forward: 'auto' or an integer")
    g = p.add_argument_group('output')
    g.add_argument('--output', default=None, metavar='JSON',
                   help='results file (default: runs/eval/<name>-<dataset>.json); the PNG goes next to it')
    g.add_argument('--name', default=None, help="curve name in the JSON and plot (default: the model's)")
    g.add_argument('--anchor', default=None,
                   help=f'BD-rate reference: a shipped codec (default: {DEFAULT_ANCHOR}; on a source, {TRUE_RD}, its '
                        'exact R(D)) or an anchor JSON (python -m lvae.anchors)')
    g.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def load_model(args):
    """-> (model, model name, weights label or None, sha256 of the weights file or None)."""
    overrides = parse_model_args(args.model_args)
    explicit, args.model = args.model is not None, args.model or DEFAULT_MODEL
    if args.model not in lvae.list_models():
        raise ValueError(f'unknown model {args.model!r}; known models: {", ".join(lvae.list_models())}')
    if args.weights:
        path = download(args.weights) if is_url(args.weights) else args.weights
        ckpt = load_file(path)
        if isinstance(ckpt, dict) and isinstance(ckpt.get('config'), dict):
            if overrides:
                raise ValueError(f'{args.weights} records its model config; --model_args cannot change it')
            expected = CONFIGS.get(args.model)
            if explicit and expected is not None:
                differ = sorted(k for k, v in RDConfig.from_dict(expected).to_dict().items()
                                if ckpt['config'].get(k) != v)
                if differ:
                    raise ValueError(f'{args.weights} holds a {ckpt.get("model_name", "model")} whose config '
                                     f'differs from {args.model} in {", ".join(differ)}; drop --model to evaluate '
                                     f"the checkpoint's own model, or give the weights of a {args.model}")
            model, ckpt = model_from_checkpoint(path)
            name = ckpt.get('model_name') or os.path.splitext(os.path.basename(path))[0]
        else:
            model, name = lvae.get_model(args.model, **overrides), args.model
            try:
                load_weights(model, ckpt)
            except ValueError as e:
                raise ValueError(f'{args.weights}: {e}') from None
        return model, name, args.weights, sha256_file(path)
    if args.model not in PRETRAINED and not args.pretrained and not args.random_init:
        print(f'warning: no weights are registered for {args.model}: evaluating an UNTRAINED model (random '
              f'weights, --seed {args.seed}); its numbers mean nothing. Pass --weights PATH_OR_URL for a trained '
              f'one.', file=sys.stderr)
        args.random_init = True
    if args.random_init:
        torch.manual_seed(args.seed)  # reproducible untrained weights
        return lvae.get_model(args.model, **overrides), args.model, None, None
    if args.model not in PRETRAINED:
        raise ValueError(f'no pretrained weights are registered for {args.model!r} (models with weights: '
                         f'{", ".join(sorted(PRETRAINED)) or "none"}); pass --weights PATH_OR_URL, or '
                         f'--random-init to evaluate an untrained model')
    model = lvae.get_model(args.model, pretrained=True, **overrides)
    entry = PRETRAINED[args.model]
    source = entry.get('url') or os.path.join(WEIGHTS_DIR, entry['file'])
    return model, args.model, source, sha256_file(download(source) if is_url(source) else source)


def references(args, test_set, test_psnr):
    """{key: (label, curve)} of the BD-rate references with a curve for ``test_set``: --anchor (on a source: its
    true R(D) over ``test_psnr``), then the previous bound. A file anchor is keyed by its file name."""
    refs = {}
    for anchor in dict.fromkeys([args.anchor or default_anchor(test_set), PREVIOUS_BOUND]):
        found = resolve_anchor_curve(anchor, test_set, missing_ok=True, test_psnr=test_psnr)
        if found is not None:
            refs[os.path.basename(anchor)] = found
    return refs


def bd_summary(result, refs, intervals):
    """Per reference and PSNR convention: the cubic BD-rate (None where undefined), its interval, the anchor's
    PSNR convention used (its published one where it has none other) and, for K > 1, each draw's BD-rate."""
    summary = {}
    for key, (label, curve) in refs.items():
        draws = draw_bd_rates(result['draws'], curve) if result['draws'] else None
        summary[key] = {'label': label, 'method': 'cubic'}
        for conv in CONVENTIONS:
            value = float(bd_rates([result['bpp']], [result[conv]], curve, conv)[0])
            summary[key][conv] = {'value': value if math.isfinite(value) else None,
                                  'interval': intervals['bd_rate'][key][conv],
                                  'anchor_psnr': conv if convention_psnr(curve, conv) is not None else 'psnr',
                                  'draws': draws[conv] if draws else None}
    return summary


def record(result, name, dataset, model, model_name, weights, sha256, compiled, intervals, bd):
    """The results JSON: CompressAI's layout (name, results: bpp / psnr-rgb) plus the evaluation's details;
    no paths of this machine (the dataset by file names and hashes, the weights by file name and sha256)."""
    return {
        'name': name, 'test-set': dataset['name'], 'dataset': dataset,
        'lambdas': result['lambdas'], 'lmb_range': result['lmb_range'],
        'outside_lmb_range': result['outside_lmb_range'],
        'results': {'bpp': result['bpp'], 'psnr': result['psnr'], 'psnr-rgb': result['psnr'],
                    'psnr_of_mean_mse': result['psnr_of_mean_mse'],
                    'bpp_std': result['bpp_std'], 'psnr_std': result['psnr_std']},
        'psnr_conventions': CONVENTIONS, 'intervals': intervals, 'bd_rate': bd, 'draws': result['draws'],
        'model': model_name, 'model_config': model.config.to_dict(), 'weights': weights_label(weights),
        'weights_sha256': sha256,
        'bpp_pixels': result['bpp_pixels'], 'samples': result['samples'], 'seed': result['seed'],
        'num_images': result['num_images'], 'skipped': result['skipped'], 'per_image': result['per_image'],
        'device': result['device'], 'amp': result['amp'], 'tf32': result['tf32'], 'noise': result['noise'],
        'compile': compiled,
        'seconds': result['seconds'],
        'torch': torch.__version__, 'lvae': lvae.__version__,
    }


def print_tables(result, refs, bd, intervals, name, test_set):
    """The per-lambda table (both PSNR conventions, 95% intervals) and one BD table per reference."""
    print('| lambda | bpp | PSNR (dB), mean of per-image PSNR (paper) | PSNR (dB) of mean MSE |\n|---:|---:|---:|---:|')
    for j, lmb in enumerate(result['lambdas']):
        cells = [f'{result[key][j]:{spec}} [{intervals[key][j][0]:{spec}}, {intervals[key][j][1]:{spec}}]'
                 for key, spec in (('bpp', '.4f'), ('psnr', '.3f'), ('psnr_of_mean_mse', '.3f'))]
        mark = ' *' if result['outside_lmb_range'][j] else ''
        print(f'| {lmb:.1f}{mark} | ' + ' | '.join(cells) + ' |')
    print(f'\n[low, high]: {describe(intervals, result["num_images"])}')
    if any(result['outside_lmb_range']):
        print(f'*: outside the trained lmb_range {result["lmb_range"]} (extrapolated)')
    for key, (label, curve) in refs.items():
        print()
        print(bd_table(result, curve, name=name, anchor_name=label, dataset=test_set,
                       interval=intervals['bd_rate'][key], interval_note=describe(intervals, result['num_images']),
                       draws={conv: bd[key][conv]['draws'] for conv in CONVENTIONS} if result['draws'] else None))


def main(argv=None):
    args = get_args(argv)
    try:
        if args.steps < 1 or args.samples < 1:
            raise ValueError(f'--steps and --samples must be >= 1, got {args.steps} and {args.samples}')
        if is_source(args.dataset_name):  # its fixed held-out sample, in memory
            images = test_set = args.dataset_name
        else:
            images = resolve_images(args.dataset_name)
            folder = os.path.dirname(images[0])
            test_set = dataset_name(args.dataset_name) or os.path.basename(os.path.normpath(folder))
            if args.anchor:
                resolve_anchor_curve(args.anchor, test_set, missing_ok=True)  # a bad --anchor fails before the work
        model, model_name, weights, sha256 = load_model(args)
        out = args.output or os.path.join('runs', 'eval', f'{args.name or model_name}-{test_set}.json')
        for path in (out, os.path.splitext(out)[0] + '.png'):
            check_writable(path)  # before the work, not after it
        lambdas = lambda_grid(args.lmb_range or model.config.lmb_range, args.steps)
        if args.device is None:
            device = default_device()
            if device.type == 'cpu':
                print('note: no CUDA device found, evaluating on the CPU (slow for large models)', file=sys.stderr)
        else:
            device = torch.device(args.device)
        if device.type == 'cpu':
            reuse_freed_memory()  # no page faults for every activation (lvae.memory)
        model = model.to(device).eval()
        compiled = compile_for_eval(model) if args.compile else False
        result = evaluate_bound(model, images, lambdas, device=device, bpp_pixels=args.bpp_pixels,
                                samples=args.samples, seed=args.seed, skip_invalid=args.skip_invalid,
                                lmb_batch=args.lmb_batch, amp=args.amp, tf32_ok=args.tf32, noise=args.noise,
                                progress=not args.no_progress)
    except (ValueError, OSError, RuntimeError) as e:  # bad input, file or download: a message, no traceback
        print(f'error: {e}', file=sys.stderr)
        return 2

    name = args.name or model_name
    for s in result['skipped']:
        print(f'skipped {s["file"]}: {s["reason"]}', file=sys.stderr)
    refs = references(args, test_set, result['psnr'] + result['psnr_of_mean_mse'])
    intervals = bootstrap(*per_image_figures(result), anchors={key: curve for key, (_, curve) in refs.items()})
    bd = bd_summary(result, refs, intervals)
    dataset = source_record(test_set) if is_source(test_set) else dataset_record(test_set, images)
    save_json(out, record(result, name, dataset, model, model_name, weights, sha256, compiled, intervals, bd))
    curves = [(name, result['bpp'], result['psnr'])]
    curves += [(label, c['bpp'], c['psnr']) for codec, label in PUBLISHED.items()
               if codec != args.anchor and (c := get_anchor(test_set, codec))]
    anchor = args.anchor or default_anchor(test_set)
    reference = next(((label, c['bpp'], c['psnr']) for key, (label, c) in refs.items()
                      if key == os.path.basename(anchor)), None)
    png = plot_rd(os.path.splitext(out)[0] + '.png', curves, reference,
                  title=f'R(D) upper bound on {test_set} ({result["num_images"]} images, bpp over '
                        f'{args.bpp_pixels} pixels)')
    print(f'{result["num_images"]} images, {len(lambdas)} lambdas, {result["seconds"]:.1f} s on {result["device"]}')
    print_tables(result, refs, bd, intervals, name, test_set)
    if is_source(test_set):
        print('\n' + excess_table(test_set, result))
    elif reference is None:
        print(f'\nno {anchor} anchor for {test_set!r}: make one with `python -m lvae.anchors {folder} '
              f'--codec jpeg` and pass it with --anchor')
    print(f'wrote {out} and {png}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
