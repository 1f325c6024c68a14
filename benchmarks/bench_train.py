"""Training throughput: one step = ``model(im, lmb=...)`` then ``loss.backward()`` on a batch of random crops,
per model, for the reference model in NCHW and in channels_last and the model ``lvae.accel.prepare`` makes
(timed in turns in one process), with its FLOP rate, its ratio to the same-run matmul roofline and its speedup
over the reference in NCHW; and the data loader alone (train-var-rate.py's DataLoader settings over an image
folder), in images/s.

    python benchmarks/bench_train.py --json benchmarks/results/train.json
"""
import itertools
import os
import time

import benchlib
import torch
from torch.utils.data import DataLoader

import lvae
from lvae.data import ImageFolderCrops

COLUMNS = [('model', 'model', 's'), ('variant', 'path', 's'), ('seconds', 'step (s)', '.3f'),
           ('median_s', 'median (s)', '.3f'), ('images_per_s', 'images/s', '.2f'), ('gflop', 'GFLOP/step', '.0f'),
           ('gflop_per_s', 'GFLOP/s', '.1f'), ('roofline_ratio', 'x roofline', '.2f'),
           ('speedup', 'x reference nchw', '.2f'),
           ('speedup_median', 'x reference nchw (medians)', '.2f')]
DATA_COLUMNS = [('folder', 'folder', 's'), ('workers', 'workers', 'd'), ('batch_size', 'batch', 'd'),
                ('crop', 'crop', 'd'), ('images_per_s', 'images/s', '.1f')]


def train_step(model, im, lmb, device, amp, adam=False):
    """One step: forward, backward and, with ``adam``, Adam's update (fused on CUDA, as train-var-rate.py; lr 0:
    the weights stay put, so every row times the same model, while Adam still does all its work)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, fused=device.type == 'cuda') if adam else None

    def step():
        model.zero_grad(set_to_none=True)
        with benchlib.autocast(device, amp):
            out = model(im, lmb=lmb)
        out['loss'].backward()
        if optimizer is not None:
            optimizer.step()
    return step


def bench_model(name, args, device, roofline):
    model = lvae.get_model(name).to(device).train()
    im = torch.rand(args.batch_size, 3, args.crop, args.crop, device=device)
    lmb = torch.tensor(model.default_lambdas(args.batch_size), device=device)  # fixed: comparable rows
    flops = benchlib.count_flops(train_step(model, im, lmb, device, None))  # the model's; Adam's are negligible
    ceiling = [benchlib.prepared_ceiling(model, lambda m: train_step(m, im, lmb, device, None), flops, roofline, device,
                                         args.repeats, name)] if args.ceiling else []
    rows = benchlib.path_rows(model, lambda m, amp: train_step(m, im, lmb, device, amp, args.adam), flops, roofline,
                              args, device, model=name, batch_size=args.batch_size, crop=args.crop, adam=args.adam)
    for r in rows:
        r['images_per_s'] = args.batch_size / r['seconds']
    print(benchlib.markdown_table(rows, benchlib.with_mfu(COLUMNS, device)), flush=True)
    return rows, ceiling


def bench_loader(args, device):
    """Images/s of the training DataLoader alone (decode, crop, flip, collate), after its first batch."""
    dataset = ImageFolderCrops(args.trainset, crop=args.crop)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        pin_memory=device.type == 'cuda', persistent_workers=args.workers > 0, drop_last=True)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    next(batches)  # workers started
    n = max(args.loader_batches, 1)
    t = time.perf_counter()
    for _ in range(n):
        im, _ = next(batches)
        if device.type == 'cuda':
            im.to(device, non_blocking=True)
    seconds = time.perf_counter() - t
    return [{'folder': args.trainset, 'workers': args.workers, 'batch_size': args.batch_size, 'crop': args.crop,
             'images': n * args.batch_size, 'seconds': seconds, 'images_per_s': n * args.batch_size / seconds}]


def main():
    p = benchlib.base_parser(__doc__.splitlines()[0])
    p.add_argument('--batch_size', type=int, default=4)
    p.add_argument('--crop', type=int, default=256)
    p.add_argument('--trainset', default='../shared/datasets/photos', help='folder for the data-loading row')
    p.add_argument('--workers', type=int, default=min(4, len(os.sched_getaffinity(0))), help='DataLoader workers')
    p.add_argument('--loader_batches', type=int, default=50)
    p.add_argument('--adam', action='store_true', help="include Adam's update in the step (fused on CUDA), as "
                   'train-var-rate.py does')
    args = p.parse_args()
    device = benchlib.setup(args)
    roofline = benchlib.Roofline(device, bf16=args.amp == 'bf16')
    rows, ceilings = [], []
    for name in args.models:
        model_rows, ceiling = bench_model(name, args, device, roofline)
        rows += model_rows
        ceilings += ceiling
    loader_rows = bench_loader(args, device)
    roofline.measure()
    for r in rows:  # against the best roofline seen in the run
        r['roofline_ratio'] = roofline.ratio(r['gflop_per_s'] * 1e9, r['precision'])
    sections = [('Training step', rows, benchlib.with_mfu(COLUMNS, device))]
    if ceilings:
        sections.append(benchlib.ceiling_section(ceilings, roofline))
    sections.append(('Data loading alone', loader_rows, DATA_COLUMNS))
    benchlib.report(f'Training step (batch {args.batch_size}, {args.crop}x{args.crop}, forward + backward'
                    + (' + Adam)' if args.adam else ')'), sections, benchlib.machine(device, args), roofline, args.json)

if __name__ == '__main__':
    main()
