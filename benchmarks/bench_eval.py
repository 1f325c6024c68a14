"""Evaluation throughput: ``forward_end2end`` of one image under inference mode, per model, for the reference
model in NCHW and in channels_last and the model ``lvae.accel.prepare`` makes (timed in turns in one process),
in megapixels x lambdas per second with its FLOP rate, its ratio to the same-run matmul roofline and its
speedup over the reference in NCHW, and the inference form the prepared blocks chose for each shape. With
``--lambdas 16``, also one image at 16 lambdas, batched as ``evaluate_bound`` does (``lmb_batch='auto'``) and
all in one forward, against 16 single-lambda forwards.

    python benchmarks/bench_eval.py --json benchmarks/results/eval.json
"""
import numpy as np
import torch

import benchlib
import lvae
from lvae import accel
from lvae.evaluation import bound_of_image, lambda_grid
from lvae.evaluation.bound import _BatchSizer, _seed, tf32
from lvae.data.images import load_image

COLUMNS = [('model', 'model', 's'), ('variant', 'path', 's'), ('seconds', 'forward (s)', '.3f'),
           ('median_s', 'median (s)', '.3f'), ('mpix_lmb_per_s', 'Mpixel x lambda/s', '.3f'),
           ('gflop', 'GFLOP/forward', '.0f'), ('gflop_per_s', 'GFLOP/s', '.1f'),
           ('roofline_ratio', 'x roofline', '.2f'), ('speedup', 'x reference nchw', '.2f'),
           ('speedup_median', 'x reference nchw (medians)', '.2f')]
FORM_COLUMNS = [('shape', 'block input', 's'), ('hidden', 'fc1 width', 'd'), ('threads', 'threads', 'd'),
                ('form', 'form', 's')]
BATCH_COLUMNS = [('model', 'model', 's'), ('lambdas', 'lambdas', 'd'), ('single_s', '1 per forward (s)', '.2f'),
                 ('lmb_batch', 'lmb_batch', 's'), ('per_forward', 'lambdas/forward', 'd'),
                 ('batched_s', 'batched (s)', '.2f'),
                 ('speedup', 'speedup', '.2f'), ('max_abs_bits_diff', 'max abs d bits', '.3g'),
                 ('max_rel_bits_diff', 'max rel d bits', '.2g'), ('max_abs_mse_diff', 'max abs d mse', '.2g'),
                 ('batched_roofline_ratio', 'batched x roofline', '.2f')]


def forward(model, im, lmb, device, amp):
    @torch.inference_mode()
    def run():
        with benchlib.autocast(device, amp):
            model.forward_end2end(im, lmb)
    return run


def bench_model(name, im, args, device, roofline):
    model = lvae.get_model(name).to(device).eval()
    lmb = torch.tensor([64.0], device=device)
    flops = benchlib.count_flops(forward(model, im, lmb, device, None))
    ceiling = [benchlib.prepared_ceiling(model, lambda m: forward(m, im, lmb, device, None), flops, roofline, device,
                                         args.repeats, name)] if args.ceiling else []
    rows = benchlib.path_rows(model, lambda m, amp: forward(m, im, lmb, device, amp), flops, roofline, args, device,
                              model=name, height=im.shape[2], width=im.shape[3])
    for r in rows:
        r['mpix_lmb_per_s'] = im.shape[2] * im.shape[3] / 1e6 / r['seconds']
    print(benchlib.markdown_table(rows, benchlib.with_mfu(COLUMNS, device)), flush=True)
    return accel.prepare(model, device), flops, rows, ceiling


def inference_form_rows():
    """The form :data:`lvae.accel.inference_forms` chose for each ConvNeXt block input shape in this run."""
    return [{'shape': 'x'.join(map(str, shape)), 'hidden': hidden, 'threads': threads, 'form': form}
            for (shape, hidden, threads), form in accel.inference_forms.chosen.items()]


def bench_lambda_batching(name, model, flops, im, args, device, roofline):
    """16 lambdas of one image: one forward per lambda vs ``lmb_batch='auto'`` (what evaluate_bound does) and vs
    all in one forward (same seeds, so the same draws). One row per batched mode. ``model`` is in the device's
    prepared form, as :func:`bench_model` leaves it (and evaluate_bound runs it)."""
    lambdas = lambda_grid(model.config.lmb_range, args.lambdas)
    seeds = [_seed(0, 0, 0, j) for j in range(len(lambdas))]
    pixels = im.shape[2] * im.shape[3]
    results, seconds = {}, {}
    for lmb_batch in (1, 'auto', len(lambdas)):
        def run():
            with tf32(False):  # fp32 as evaluate_bound computes it by default
                results[lmb_batch] = bound_of_image(model, im[0], lambdas, seeds, sizer=_BatchSizer(device, lmb_batch))
        # after one untimed run: the first grows the heap (page faults), as only the first image of a dataset does
        seconds[lmb_batch], _ = benchlib.time_it(run, device, args.lambda_repeats, warmup=1)
    bits1, mse1 = results[1]
    rows = []
    for lmb_batch in ('auto', len(lambdas)):
        bits2, mse2 = results[lmb_batch]
        rows.append({'model': name, 'lambdas': len(lambdas), 'height': im.shape[2], 'width': im.shape[3],
                     'lmb_batch': str(lmb_batch), 'single_s': seconds[1], 'batched_s': seconds[lmb_batch],
                     'per_forward': _BatchSizer(device, lmb_batch).size(len(lambdas), pixels),
                     'speedup': seconds[1] / seconds[lmb_batch],
                     'max_abs_bits_diff': float(np.abs(bits1 - bits2).max()),
                     'max_rel_bits_diff': float(np.abs(bits1 / bits2 - 1).max()),
                     'max_abs_mse_diff': float(np.abs(mse1 - mse2).max()),
                     'batched_gflop_per_s': flops * len(lambdas) / seconds[lmb_batch] / 1e9})
    return rows


def main():
    p = benchlib.base_parser(__doc__.splitlines()[0])
    p.add_argument('--image', default='../shared/datasets/kodak/kodim01.png', help='a Kodak-sized image (768x512)')
    p.add_argument('--lambdas', type=int, default=0, help='also time one image at this many lambdas, batched')
    p.add_argument('--lambda_repeats', type=int, default=1, help='timed repeats of the 16-lambda comparison')
    p.set_defaults(repeats=5)
    args = p.parse_args()
    device = benchlib.setup(args)
    im = load_image(args.image)[None].to(device)
    roofline = benchlib.Roofline(device, bf16=args.amp == 'bf16')
    rows, ceilings, batch_rows = [], [], []
    for name in args.models:
        model, flops, model_rows, ceiling = bench_model(name, im, args, device, roofline)
        rows += model_rows
        ceilings += ceiling
        if args.lambdas:
            batch_rows += bench_lambda_batching(name, model, flops, im, args, device, roofline)
            print('\n'.join(benchlib.markdown_table(batch_rows[-2:], BATCH_COLUMNS[:-1]).splitlines()[2:]), flush=True)
    roofline.measure()
    for r in rows:
        r['roofline_ratio'] = roofline.ratio(r['gflop_per_s'] * 1e9, r['precision'])
    for r in batch_rows:
        r['batched_roofline_ratio'] = roofline.ratio(r['batched_gflop_per_s'] * 1e9)
    h, w = im.shape[2:]
    sections = [('Forward', rows, benchlib.with_mfu(COLUMNS, device))]
    if accel.inference_forms.chosen:
        sections.append(('Inference form of the prepared blocks, by input shape (B x C x H x W)',
                         inference_form_rows(), FORM_COLUMNS))
    if ceilings:
        sections.append(benchlib.ceiling_section(ceilings, roofline))
    if batch_rows:
        sections.append((f'{args.lambdas} lambdas of one image', batch_rows, BATCH_COLUMNS))
    benchlib.report(f'Evaluation (forward_end2end, one {w}x{h} image, inference mode)', sections,
                    benchlib.machine(device, args), roofline, args.json)

if __name__ == '__main__':
    main()
