"""Shared helpers of the benchmark scripts: the machine, the matmul roofline, FLOP counts, timing, and the
markdown table / JSON output. Run the scripts from the repository root (``python benchmarks/bench_train.py``).
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count  # noqa: E402

from lvae.memory import reuse_freed_memory  # noqa: E402

ROOFLINE_N = 2048  # the roofline is the rate of one dense ROOFLINE_N x ROOFLINE_N matmul


def base_parser(description):
    """Flags every benchmark takes: models, device, threads, repeats, --json."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--models', nargs='+', default=['rd_model_base', 'rd_model_small'])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s choice)')
    p.add_argument('--repeats', type=int, default=3, help='timed repeats per row (the best is reported)')
    p.add_argument('--amp', choices=('bf16',), default=None, help='also time a bf16 autocast row')
    p.add_argument('--compile', action='store_true', help='also time a torch.compile row')
    p.add_argument('--json', default=None, help='write the results here')
    p.add_argument('--glibc-malloc', action='store_true', help="keep glibc's default malloc on CPU (mmap and "
                   'unmap every large tensor) instead of lvae.memory.reuse_freed_memory()')
    return p


def setup(args):
    """Threads, seed and host memory reuse (as the scripts do on CPU) from ``args``; returns the torch.device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    reused = device.type == 'cpu' and not args.glibc_malloc and reuse_freed_memory()
    args.host_memory = 'reused (lvae.memory)' if reused else 'glibc default'
    return device


def machine(device, args):
    """Where the figures come from: CPU model (lscpu), threads, host memory setting, torch version, GPU."""
    try:
        lines = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout.splitlines()
        cpu = next(line.split(':', 1)[1].strip() for line in lines if line.startswith('Model name'))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = platform.processor() or 'unknown'
    return {'cpu': cpu, 'cpu_count': os.cpu_count(), 'threads': torch.get_num_threads(), 'torch': torch.__version__,
            'host_memory': args.host_memory,
            'python': platform.python_version(),
            'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None}


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_it(fn, device, repeats, warmup=1):
    """Seconds per call of ``fn()``: ``(best, median)`` over ``repeats`` timed calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def matmul_rate(device, dtype=torch.float32, repeats=10):
    """FLOP/s of a dense 2048x2048 matmul (2 n^3 FLOPs), best of ``repeats``; TF32 off for fp32."""
    a, b = (torch.randn(ROOFLINE_N, ROOFLINE_N, device=device).to(dtype) for _ in range(2))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        best, _ = time_it(lambda: torch.mm(a, b), device, repeats, warmup=2)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * ROOFLINE_N ** 3 / best


class Roofline:
    """Dense matmul rates (FLOP/s) per precision, measured in this run: fp32 always, bf16 on a GPU or when
    asked. :meth:`measure` again at the end of a run keeps the best of all measurements."""

    def __init__(self, device, bf16=False):
        self.device = device
        self.dtypes = {'fp32': torch.float32}
        if bf16 or device.type == 'cuda':
            self.dtypes['bf16'] = torch.bfloat16
        self.rates = {}
        self.measure()

    def measure(self):
        for name, dtype in self.dtypes.items():
            self.rates[name] = max(self.rates.get(name, 0.0), matmul_rate(self.device, dtype))

    def ratio(self, flops_per_s, precision='fp32'):
        return flops_per_s / self.rates[precision]


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None):
    """FLOPs of ``aten.convolution_backward``: the input gradient and the weight gradient each cost what the
    forward does. (torch's own formula ignores ``groups``: it counts a depthwise convolution's backward C
    times over, which would inflate rd_model_base's training FLOPs 4x.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn):
    """FLOPs of one call of ``fn()`` (forward and, when ``fn`` calls it, backward), as counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, depthwise included), with
    :func:`_conv_backward_flop` for convolution backward."""
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop}) \
            as counter:
        fn()
    return counter.get_total_flops()


def markdown_table(rows, columns):
    """``columns``: (key, header, format) triples -> a markdown table of ``rows`` (dicts)."""
    lines = ['| ' + ' | '.join(h for _, h, _ in columns) + ' |', '|' + '---|' * len(columns)]
    for row in rows:
        cells = [('' if row.get(k) is None else format(row[k], f)) for k, _, f in columns]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def report(title, sections, meta, roofline, json_path):
    """Print the machine, the rooflines and each ``(heading, rows, columns)`` section as markdown; write
    everything to ``json_path`` when given."""
    print(f'## {title}\n')
    print(f"Machine: {meta['cpu']} ({meta['cpu_count']} CPUs, {meta['threads']} torch threads, host memory "
          f"{meta['host_memory']})"
          + (f", GPU {meta['gpu']}" if meta['gpu'] else '') + f", torch {meta['torch']}")
    print('Roofline (2048x2048 matmul, best of 10): '
          + ', '.join(f'{k} {v / 1e9:.1f} GFLOP/s' for k, v in roofline.rates.items()) + '\n')
    for heading, rows, columns in sections:
        print(f'### {heading}\n\n{markdown_table(rows, columns)}\n')
    if json_path:
        data = {'title': title, 'machine': meta, 'command': ' '.join(sys.argv),
                'roofline_flops_per_s': roofline.rates,
                'sections': {heading: rows for heading, rows, _ in sections}}
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, 'w') as f:
            json.dump(data, f, indent=1)
        print(f'wrote {json_path}')


def autocast(device, amp):
    """bf16 autocast when ``amp == 'bf16'``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == 'bf16')


def measure(run, flops, roofline, device, repeats, precision='fp32', **fields):
    """Time ``run()`` (best and median of ``repeats``) -> a result row: ``fields`` plus ``seconds``,
    ``median_s``, ``gflop``, ``gflop_per_s`` and ``roofline_ratio``."""
    best, median = time_it(run, device, repeats)
    rate = flops / best
    return {**fields, 'seconds': best, 'median_s': median, 'gflop': flops / 1e9, 'gflop_per_s': rate / 1e9,
            'roofline_ratio': roofline.ratio(rate, precision), 'precision': precision}


def variant_rows(model, make_run, add_row, args, device, compiled):
    """``add_row(name, run, precision)`` for each fast-path variant of :data:`VARIANTS`, then for bf16 autocast
    and ``compiled(model)`` when ``args`` asks; ``make_run(model, amp)`` builds the timed call."""
    for name, memory_format, fold in VARIANTS:
        with variant(model, device, memory_format, fold) as m:
            add_row(name, make_run(m, None), 'fp32')
    if args.amp:
        add_row(f'channels_last + amp {args.amp}', make_run(model, args.amp), args.amp)
    if args.compile:
        add_row('channels_last + compile', make_run(compiled(model), None), 'fp32')


VARIANTS = (  # (row name, memory format, AdaLN folded into fc1)
    ('nchw, unfolded', torch.contiguous_format, False),  # the layout of the authors' code
    ('channels_last, unfolded', torch.channels_last, False),
    ('channels_last (default)', torch.channels_last, True),
)


@contextlib.contextmanager
def variant(model, device, memory_format, fold):
    """Run ``model`` (converted in place) in ``memory_format``, with the ConvNeXt blocks' AdaLN fold on or off."""
    import lvae.layers
    saved = lvae.layers.FOLD_PIXELS_PER_CHANNEL
    lvae.layers.FOLD_PIXELS_PER_CHANNEL = saved if fold else float('inf')
    try:
        yield model.to(device, memory_format=memory_format)
    finally:
        lvae.layers.FOLD_PIXELS_PER_CHANNEL = saved
