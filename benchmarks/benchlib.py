"""Shared helpers of the benchmark scripts: the machine, the matmul roofline, FLOP counts, timing, and the
markdown table / JSON output. Run the scripts from the repository root (``python benchmarks/bench_train.py``).
"""
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
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count  # noqa: E402

from lvae import accel  # noqa: E402
from lvae.evaluation.bound import tf32  # noqa: E402
from lvae.accel.memory import reuse_freed_memory  # noqa: E402
from lvae.evaluation.results import save_json  # noqa: E402
from lvae.cli import FlagParser

# Crops of Kodak images of five sizes (file, top, left, height, width; three not square, one not a multiple of 64):
# the images of the refinement and spread-evaluation benchmarks, in an order whose two halves cost about the same
KODAK_CROPS = (('kodim08.png', 300, 100, 64, 64), ('kodim05.png', 128, 256, 128, 128),
               ('kodim14.png', 100, 300, 100, 160), ('kodim19.png', 256, 128, 192, 128),
               ('kodim23.png', 64, 200, 128, 192))


def kodak_crops(kodak):
    """The images of :data:`KODAK_CROPS` cut from the Kodak folder ``kodak``: (3, H, W) tensors in [0, 1]."""
    from lvae.data import load_image
    return [load_image(os.path.join(kodak, f))[:, y:y + h, x:x + w] for f, y, x, h, w in KODAK_CROPS]


# The roofline is the rate of one dense N x N matmul: N = 2048 on a CPU, 8192 on a GPU (2048 is too small
# to fill an H100: it reaches about 60% of the bf16 rate of 8192).
ROOFLINE_N = {'cpu': 2048, 'cuda': 8192}
# Dense bf16 tensor-core peak (FLOP/s, no sparsity) from the vendor's datasheet, by device-name substring:
# the denominator of MFU.
BF16_PEAK = {'H200': 989.4e12, 'H100 PCIe': 756.5e12, 'H100': 989.4e12, 'A100': 312e12, 'L40S': 362.05e12,
             'RTX 4090': 165.2e12}


def base_parser(description):
    """Flags every benchmark takes: models, device, threads, repeats, --json."""
    p = FlagParser(description=description)
    p.add_argument('--models', nargs='+', default=['rd_model_base'])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (0: torch\'s choice)')
    p.add_argument('--repeats', type=int, default=3, help='timed rounds (the best is reported)')
    p.add_argument('--amp', choices=('bf16',), default=None, help='also time a bf16 autocast row')
    p.add_argument('--compile', action='store_true', help='also time a row with compiled blocks')
    p.add_argument('--ceiling', action='store_true', help="also time the prepared path's matmuls alone")
    p.add_argument('--json', default=None, help='write the results here')
    p.add_argument('--glibc-malloc', action='store_true', help="keep glibc's default malloc on CPU (mmap and "
                   'unmap every large tensor) instead of lvae.accel.memory.reuse_freed_memory()')
    return p


def setup(args):
    """Threads, seed and host memory reuse (as the scripts do on CPU), cuDNN autotuning on CUDA (fixed shapes,
    as train-var-rate.py) from ``args``; returns the torch.device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True
    reused = device.type == 'cpu' and not args.glibc_malloc and reuse_freed_memory()
    args.host_memory = 'reused (lvae.accel.memory)' if reused else 'glibc default'
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


def time_interleaved(paths, device, repeats, warmup=1):
    """Seconds per call of each path, timed in turns: ``paths`` maps a name to ``(enter, run)``; each round calls
    ``enter()`` (untimed) then ``run()`` (timed) for every path, so that a slow spell of a shared machine hits
    all alike, in the given order and the reverse order by turns (a drift of the machine's speed favours none).
    ``warmup`` untimed rounds first. Returns {name: (best, median)} over ``repeats`` rounds."""
    times = {name: [] for name in paths}
    for i in range(warmup + repeats):
        for name, (enter, run) in (list(paths.items()) if i % 2 == 0 else list(paths.items())[::-1]):
            enter()
            synchronize(device)
            t = time.perf_counter()
            run()
            synchronize(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


PRECISIONS = {'fp32': (torch.float32, False), 'tf32': (torch.float32, True), 'bf16': (torch.bfloat16, False)}


def matmul_rate(device, precision='fp32', repeats=10):
    """FLOP/s of one dense N x N matmul (2 N^3 FLOPs, N from :data:`ROOFLINE_N`), best of ``repeats``.
    ``precision``: 'fp32' (TF32 off), 'tf32' (fp32 tensors, TF32 on; CUDA) or 'bf16'."""
    dtype, allow_tf32 = PRECISIONS[precision]
    n = ROOFLINE_N[device.type]
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    with tf32(allow_tf32):
        best, _ = time_it(lambda: torch.mm(a, b), device, repeats, warmup=2)
    return 2 * n ** 3 / best


def bf16_peak(device):
    """The device's datasheet dense bf16 FLOP/s (:data:`BF16_PEAK`), or None (a CPU, an unknown GPU)."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


class Roofline:
    """Dense matmul rates (FLOP/s) per precision, measured in this run: fp32 always, bf16 when asked, and on a
    GPU tf32 and bf16. :meth:`measure` again at the end of a run keeps the best of all measurements."""

    def __init__(self, device, bf16=False):
        self.device = device
        self.precisions = ['fp32'] + (['tf32', 'bf16'] if device.type == 'cuda' else ['bf16'] if bf16 else [])
        self.rates = {}
        self.peak_bf16 = bf16_peak(device)
        self.measure()

    def measure(self):
        for name in self.precisions:
            self.rates[name] = max(self.rates.get(name, 0.0), matmul_rate(self.device, name))

    def ratio(self, flops_per_s, precision='fp32'):
        return flops_per_s / self.rates[precision]

    def mfu(self, flops_per_s):
        """Model FLOP/s over the datasheet dense bf16 peak (None where it is unknown)."""
        return flops_per_s / self.peak_bf16 if self.peak_bf16 else None


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None):
    """FLOPs of ``aten.convolution_backward``: the input gradient and the weight gradient each cost what the
    forward does. (torch's own formula ignores ``groups``: it counts a depthwise convolution's backward C
    times over, which would inflate rd_model_base's training FLOPs 4x.)"""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _addmm_inplace_flop(_self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs):
    """FLOPs of ``aten.addmm_``: those of its matmul, (m, k) @ (k, n)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def count_flops(fn):
    """FLOPs of one call of ``fn()`` (forward and, when ``fn`` calls it, backward), as counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, depthwise included), with
    :func:`_conv_backward_flop` for convolution backward, and in-place ``addmm_`` (which torch does not count)
    counted as ``addmm``."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop, torch.ops.aten.addmm_: _addmm_inplace_flop}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


_aten = torch.ops.aten
MATMULS = (_aten.mm.default, _aten.bmm.default, _aten.addmm.default, _aten.addmm_.default, _aten.baddbmm.default,
           _aten.linear.default)
CEILING_COLUMNS = [('model', 'model', 's'), ('variant', 'path', 's'), ('calls', 'matmul calls', 'd'),
                   ('matmul_gflop', 'matmul GFLOP', '.0f'), ('matmul_share', 'share of FLOPs', '.2f'),
                   ('matmul_seconds', 'matmuls alone (s)', '.3f'), ('matmul_ratio', 'matmuls x roofline', '.2f'),
                   ('ceiling_ratio', 'ceiling x roofline', '.2f')]


class _MatmulRecorder(TorchDispatchMode):
    """Records every matmul of a call (``calls``: op, arguments with tensors as meta tensors of the same shape
    and dtype), forward and backward, as it runs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            spec = [torch.empty(a.shape, dtype=a.dtype, device='meta') if isinstance(a, torch.Tensor) else a
                    for a in args]
            self.calls.append((func, spec, dict(kwargs or {})))
        return func(*args, **(kwargs or {}))


def matmul_ceiling(run, flops, roofline, device, repeats, **fields):
    """The rate the matmuls of ``run()`` reach on their own, and the ceiling that puts on the whole call.

    Every matmul of one ``run()`` (forward and backward) is replayed alone, in the same order, on contiguous
    random operands of the same shapes (one set per shape). ``ceiling_ratio`` is the call's FLOP rate over the
    roofline if its matmuls took what they take alone, its other FLOPs (the convolutions) ran at the roofline,
    and everything else (element-wise work, reductions, copies) took no time: no code path can exceed it
    without faster matmuls. Returns a row: ``fields`` plus the figures of :data:`CEILING_COLUMNS`."""
    with _MatmulRecorder() as recorder:
        run()
    operands = {}

    def operand(spec):
        if not isinstance(spec, torch.Tensor):
            return spec
        key = (tuple(spec.shape), spec.dtype)
        if key not in operands:
            operands[key] = torch.randn(spec.shape, device=device).to(spec.dtype)
        return operands[key]
    calls = [(func, [operand(a) for a in spec], kwargs) for func, spec, kwargs in recorder.calls]

    def replay():
        for func, args, kwargs in calls:
            func(*args, **kwargs)
    mm_flops = count_flops(replay)
    seconds, _ = time_it(replay, device, repeats)
    row = {**fields, 'calls': len(calls), 'gflop': flops / 1e9, 'matmul_gflop': mm_flops / 1e9,
           'matmul_share': mm_flops / flops, 'matmul_seconds': seconds}
    return rate_ceiling(row, roofline)


def rate_ceiling(row, roofline):
    """Set a :func:`matmul_ceiling` row's ratios against the roofline's fp32 rate (again after a re-measure)."""
    rate, flops, mm_flops = roofline.rates['fp32'], row['gflop'] * 1e9, row['matmul_gflop'] * 1e9
    row['matmul_ratio'] = mm_flops / row['matmul_seconds'] / rate
    row['ceiling_ratio'] = flops / (row['matmul_seconds'] + (flops - mm_flops) / rate) / rate
    return row


def prepared_ceiling(model, make_run, flops, roofline, device, repeats, name):
    """:func:`matmul_ceiling` of ``make_run(model)`` with the model prepared (``lvae.accel.prepare``), what the
    scripts run; prints the row and returns it."""
    accel.prepare(model, device)
    row = matmul_ceiling(make_run(model), flops, roofline, device, repeats, model=name, variant=PREPARED)
    print(markdown_table([row], CEILING_COLUMNS).splitlines()[-1], flush=True)
    return row


def ceiling_section(rows, roofline):
    """The report section of :func:`prepared_ceiling` rows, re-rated against the run's best roofline."""
    return ("Matmuls alone (the prepared path's fp32 matmuls replayed on their own)",
            [rate_ceiling(r, roofline) for r in rows], CEILING_COLUMNS)


def with_mfu(columns, device):
    """``columns`` plus an MFU column on a GPU."""
    return columns + [('mfu', 'MFU', '.3f')] if device.type == 'cuda' else columns


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
    n = ROOFLINE_N[roofline.device.type]
    print(f'Roofline ({n}x{n} matmul, best of 10): '
          + ', '.join(f'{k} {v / 1e9:.1f} GFLOP/s' for k, v in roofline.rates.items())
          + (f'; datasheet dense bf16 peak {roofline.peak_bf16 / 1e12:.1f} TFLOP/s (MFU)' if roofline.peak_bf16
             else '') + '\n')
    for heading, rows, columns in sections:
        print(f'### {heading}\n\n{markdown_table(rows, columns)}\n')
    if json_path:
        data = {'title': title, 'machine': meta, 'command': ' '.join(sys.argv),
                'roofline_n': ROOFLINE_N[roofline.device.type], 'roofline_flops_per_s': roofline.rates,
                'bf16_peak_flops_per_s': roofline.peak_bf16,
                'sections': {heading: rows for heading, rows, _ in sections}}
        write_json(json_path, data)


def write_json(path, data):
    """``data`` as JSON at ``path`` (:func:`lvae.evaluation.results.save_json`: atomically, its folder made), and a line
    saying so."""
    save_json(path, data)
    print(f'wrote {path}')


def autocast(device, amp):
    """bf16 autocast when ``amp == 'bf16'``, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == 'bf16')


def row(seconds, flops, roofline, precision='fp32', **fields):
    """A result row from ``(best, median)`` seconds: ``fields`` plus ``seconds``, ``median_s``, ``gflop``,
    ``gflop_per_s``, ``roofline_ratio`` (against the roofline of ``precision``) and ``mfu`` (against the
    datasheet bf16 peak, GPUs only)."""
    best, median = seconds
    rate = flops / best
    return {**fields, 'seconds': best, 'median_s': median, 'gflop': flops / 1e9, 'gflop_per_s': rate / 1e9,
            'roofline_ratio': roofline.ratio(rate, precision), 'mfu': roofline.mfu(rate), 'precision': precision}


REFERENCE_NCHW, REFERENCE_CHANNELS_LAST, PREPARED = 'reference, nchw', 'reference, channels_last', 'lvae.accel.prepare'


def enter_path(model, device, path):
    """Put ``model`` (in place) on ``device`` in one of the compared forms: the reference model in NCHW or in
    channels_last, or the model :func:`lvae.accel.prepare` makes for the device."""
    accel.reference(model)
    if path == PREPARED:
        accel.prepare(model, device)
    else:
        model.to(device, memory_format=torch.channels_last if path == REFERENCE_CHANNELS_LAST
                 else torch.contiguous_format)
    return model


def path_rows(vae, make_run, flops, roofline, args, device, **fields):
    """Rows of ``vae`` on the compared paths timed in turns (:func:`time_interleaved`; fp32, TF32 off), then,
    prepared, one row each (not in turns) on a GPU with TF32, with bf16 autocast when ``args.amp``, and with
    compiled blocks (under ``args.amp`` when given) when ``args.compile``. ``make_run(vae, amp)`` builds the
    timed call; every row has its ``speedup`` over the reference in NCHW, by the best times and by the medians
    (``speedup_median``)."""
    paths = {p: (lambda p=p: enter_path(vae, device, p), make_run(vae, None))
             for p in (REFERENCE_NCHW, REFERENCE_CHANNELS_LAST, PREPARED)}
    rows = [row(seconds, flops, roofline, variant=name, **fields)
            for name, seconds in time_interleaved(paths, device, args.repeats).items()]
    extra = [('tf32', 'tf32', None, False)] if device.type == 'cuda' else []
    if args.amp:
        extra.append((f'amp {args.amp}', args.amp, args.amp, False))
    if args.compile:
        extra.append(('compile' + (f' + amp {args.amp}' if args.amp else ''), args.amp or 'fp32', args.amp, True))
    for name, precision, amp, compile in extra:
        accel.prepare(vae, device, compile=compile)
        with tf32(precision == 'tf32'):
            seconds = time_it(make_run(vae, amp), device, args.repeats)
        rows.append(row(seconds, flops, roofline, precision, variant=f'{PREPARED} + {name}', **fields))
    for r in rows:
        r['speedup'] = rows[0]['seconds'] / r['seconds']
        r['speedup_median'] = rows[0]['median_s'] / r['median_s']
    return rows
