"""Evaluate the R(D) upper bound of a variable-rate model on a dataset: JSON + R-D plot + BD-rate table.

Examples::

    python eval-var-rate.py                                    # rd_model_small's registered weights on Kodak
    python eval-var-rate.py --model rd_model_base --dataset_name tecnick-rgb-1200 --bpp-pixels padded
    python eval-var-rate.py --weights runs/lvae/my_run/last_ema.pt --dataset_name /data/my-photos \\
        --anchor results/jpeg-my-photos.json
    python eval-var-rate.py --model rd_model_tiny --random-init --steps 4   # smoke test, meaningless numbers
"""
import argparse
import json
import os
import sys

import torch

import lvae
from lvae.bdrate import DEFAULT_ANCHOR, bd_table, get_anchor, resolve_anchor
from lvae.checkpoint import download, is_url, load_file, load_weights, model_from_checkpoint, sha256_file
from lvae.cli import parse_model_args
from lvae.evaluation import (BPP_PIXELS, compile_for_eval, default_device, evaluate_bound, lambda_grid,
                             resolve_images)
from lvae.memory import reuse_freed_memory
from lvae.models.rd.zoo import PRETRAINED, WEIGHTS_DIR
from lvae.paths import dataset_name
from lvae.plotting import plot_rd

# Published curves drawn for comparison when the dataset has them (shipped in lvae/data/anchors.json).
PUBLISHED = {'qarv_base': 'QARV-base (published)', 'qres34m': 'QRes-VAE 34M (published)'}


def lambdas_per_forward(text):
    """--lmb-batch: 'auto' or a positive integer."""
    if text == 'auto' or (text.isdigit() and int(text) > 0):
        return text if text == 'auto' else int(text)
    raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog=__doc__.split('\n\n', 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('model')
    g.add_argument('--model', default='rd_model_small', help='registered model name (default: %(default)s)')
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
    g.add_argument('--dataset_name', default='kodak', help='known dataset name or image folder (default: kodak)')
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
    g.add_argument('--tf32', action='store_true', help='CUDA: fp32 matmuls and convolutions in TF32 (default: strict '
                   'fp32; benchmarks/RESULTS.md gives the effect on the bound)')
    g.add_argument('--compile', action='store_true', help='torch.compile the ConvNeXt blocks (compiling '
                   'rd_model_base took over 110 s on an H100: for large datasets)')
    g.add_argument('--lmb-batch', default='auto', type=lambdas_per_forward,
                   help="lambdas per forward: 'auto' or an integer")
    g = p.add_argument_group('output')
    g.add_argument('--output', default=None, metavar='JSON',
                   help='results file (default: results/<model>-<dataset>.json); the PNG goes next to it')
    g.add_argument('--name', default=None, help="curve name in the JSON and plot (default: the model's)")
    g.add_argument('--anchor', default=DEFAULT_ANCHOR,
                   help='BD-rate reference: a shipped codec (%(default)s) or an anchor JSON (python -m lvae.anchors)')
    g.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def load_model(args):
    """-> (model, model name, weights label or None, sha256 of the weights file or None)."""
    overrides = parse_model_args(args.model_args)
    if args.model not in lvae.list_models():
        raise ValueError(f'unknown model {args.model!r}; known models: {", ".join(lvae.list_models())}')
    if args.weights:
        path = download(args.weights) if is_url(args.weights) else args.weights
        ckpt = load_file(path)
        if isinstance(ckpt, dict) and isinstance(ckpt.get('config'), dict):
            if overrides:
                raise ValueError(f'{args.weights} records its model config; --model_args cannot change it')
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


def record(result, name, test_set, folder, model, model_name, weights, sha256, compiled):
    """The results JSON: CompressAI's layout (name, results: bpp / psnr-rgb) plus the evaluation's details."""
    return {
        'name': name, 'test-set': test_set, 'dataset_path': os.path.abspath(folder),
        'lambdas': result['lambdas'],
        'results': {'bpp': result['bpp'], 'psnr': result['psnr'], 'psnr-rgb': result['psnr'],
                    'bpp_std': result['bpp_std'], 'psnr_std': result['psnr_std']},
        'model': model_name, 'model_config': model.config.to_dict(), 'weights': weights, 'weights_sha256': sha256,
        'bpp_pixels': result['bpp_pixels'], 'samples': result['samples'], 'seed': result['seed'],
        'num_images': result['num_images'], 'skipped': result['skipped'], 'per_image': result['per_image'],
        'device': result['device'], 'amp': result['amp'], 'tf32': result['tf32'], 'compile': compiled,
        'seconds': result['seconds'],
        'torch': torch.__version__, 'lvae': lvae.__version__,
    }


def main(argv=None):
    args = get_args(argv)
    try:
        if args.steps < 1 or args.samples < 1:
            raise ValueError(f'--steps and --samples must be >= 1, got {args.steps} and {args.samples}')
        paths = resolve_images(args.dataset_name)
        folder = os.path.dirname(paths[0])
        test_set = dataset_name(args.dataset_name) or os.path.basename(os.path.normpath(folder))
        reference = resolve_anchor(args.anchor, test_set, missing_ok=True)
        model, model_name, weights, sha256 = load_model(args)
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
        result = evaluate_bound(model, paths, lambdas, device=device, bpp_pixels=args.bpp_pixels,
                                samples=args.samples, seed=args.seed, skip_invalid=args.skip_invalid,
                                lmb_batch=args.lmb_batch, amp=args.amp, tf32_ok=args.tf32,
                                progress=not args.no_progress)
    except (ValueError, OSError, RuntimeError) as e:  # bad input, file or download: a message, no traceback
        print(f'error: {e}', file=sys.stderr)
        return 2

    name = args.name or model_name
    for s in result['skipped']:
        print(f'skipped {s["file"]}: {s["reason"]}', file=sys.stderr)
    out = args.output or os.path.join('results', f'{name}-{test_set}.json')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    data = record(result, name, test_set, folder, model, model_name, weights, sha256, compiled)
    with open(out, 'w') as f:
        json.dump(data, f, indent=1)
    curves = [(name, result['bpp'], result['psnr'])]
    curves += [(label, c['bpp'], c['psnr']) for codec, label in PUBLISHED.items()
               if (c := get_anchor(test_set, codec))]
    png = plot_rd(os.path.splitext(out)[0] + '.png', curves, reference,
                  title=f'R(D) upper bound on {test_set} ({result["num_images"]} images, bpp over '
                        f'{args.bpp_pixels} pixels)')
    print(f'{result["num_images"]} images, {len(lambdas)} lambdas, {result["seconds"]:.1f} s on {result["device"]}')
    print('| lambda | bpp | PSNR (dB) |\n|---:|---:|---:|')
    for lmb, bpp, psnr in zip(result['lambdas'], result['bpp'], result['psnr']):
        print(f'| {lmb:.1f} | {bpp:.4f} | {psnr:.3f} |')
    if reference is not None:
        print()
        print(bd_table(result['bpp'], result['psnr'], reference[1], reference[2], name=name,
                       anchor_name=reference[0], dataset=test_set))
    else:
        print(f'\nno {args.anchor} anchor for {test_set!r}: make one with `python -m lvae.anchors {folder} '
              f'--codec jpeg` and pass it with --anchor')
    print(f'wrote {out} and {png}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
