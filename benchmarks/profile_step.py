"""Where the time of one training step and one evaluation forward goes: ``torch.profiler`` over a few steps after
a warm-up, summarised as time by op (self time on the device, or on the CPU without one), kernel launches per
step and the share of the step during which the GPU sits idle.

    python benchmarks/profile_step.py --models rd_model_base --batch_size 16 --amp bf16 --json profile.json
    python benchmarks/profile_step.py --models rd_model_tiny --batch_size 2 --crop 128 --device cpu   # a dry run
"""
import sys
import time

import benchlib
import torch
from torch.profiler import ProfilerActivity, profile

import lvae
from lvae.accel import prepare


def op_table(prof, device, steps, top):
    """The ``top`` ops by self time (device time on a GPU), per step: [{op, calls, ms}]."""
    key = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{'op': e.key, 'calls': e.count / steps, 'ms': getattr(e, key) / 1e3 / steps} for e in events]


def launches_and_busy(prof, steps):
    """Kernels launched per step and the device's busy time per step (ms): the sum of its kernels' durations
    (one stream: they do not overlap)."""
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels) / steps, sum(e.device_time_total for e in kernels) / 1e3 / steps


def profile_run(run, device, steps):
    """Profile ``steps`` calls of ``run`` after two warm-up calls; returns (profiler, wall ms per step)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    for _ in range(2):
        run()
    benchlib.synchronize(device)
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            run()
        benchlib.synchronize(device)
        wall = (time.perf_counter() - t0) * 1e3 / steps
    return prof, wall


def summarise(name, prof, wall, device, steps, top, **fields):
    row = {'name': name, **fields, 'wall_ms': wall, 'ops': op_table(prof, device, steps, top)}
    if device.type == 'cuda':
        row['launches_per_step'], row['busy_ms'] = launches_and_busy(prof, steps)
        row['idle_share'] = max(0.0, 1 - row['busy_ms'] / wall)
    print(f'\n### {name}: {wall:.1f} ms per step' + (
        f', {row["launches_per_step"]:.0f} kernel launches, GPU idle {100 * row["idle_share"]:.0f}% of the step'
        if device.type == 'cuda' else ''))
    print('| op | calls/step | ms/step |\n|---|---:|---:|')
    for op in row['ops']:
        print(f'| `{op["op"]}` | {op["calls"]:.0f} | {op["ms"]:.2f} |')
    return row


def main():
    p = benchlib.base_parser(__doc__.split('\n\n')[0])
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--crop', type=int, default=256)
    p.add_argument('--steps', type=int, default=3, help='profiled steps (after 2 warm-up steps)')
    p.add_argument('--top', type=int, default=25, help='ops listed')
    p.add_argument('--eval-size', type=int, nargs=2, default=(512, 768), metavar=('H', 'W'),
                   help='image of the evaluation forward (default: a Kodak image)')
    args = p.parse_args()
    device = benchlib.setup(args)
    rows = []
    for name in args.models:
        model = prepare(lvae.get_model(name), device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.0, fused=device.type == 'cuda')
        im = torch.rand(args.batch_size, 3, args.crop, args.crop, device=device)
        lmb = torch.tensor(model.default_lambdas(args.batch_size), device=device)

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            with benchlib.autocast(device, args.amp):
                out = model(im, lmb=lmb)
            out['loss'].backward()
            optimizer.step()

        prof, wall = profile_run(train_step, device, args.steps)
        rows.append(summarise(f'{name} training step', prof, wall, device, args.steps, args.top,
                              batch_size=args.batch_size, crop=args.crop, amp=args.amp))
        image = torch.rand(1, 3, *args.eval_size, device=device)
        lmb1 = torch.tensor([64.0], device=device)

        def forward():
            with torch.inference_mode(), benchlib.autocast(device, args.amp):
                model.forward_end2end(image, lmb1)

        prof, wall = profile_run(forward, device, args.steps)
        rows.append(summarise(f'{name} evaluation forward', prof, wall, device, args.steps, args.top,
                              size=list(args.eval_size), amp=args.amp))
    if args.json:
        benchlib.write_json(args.json, {'machine': benchlib.machine(device, args), 'command': ' '.join(sys.argv),
                                        'profiles': rows})


if __name__ == '__main__':
    main()
