"""A CPU kernel for the weight gradient of the ConvNeXt blocks' depthwise 7x7 convolution (training).

oneDNN computes it at about 7 GFLOP/s on a 2-core Xeon (20x slower than the same convolution's forward), and
it was a quarter of a CPU training step of rd_model_base. The kernel here splits the rows of the batch among
the threads; each sums into its own accumulators, 16 channels (one vector) at a time, over tiles of 14 output
columns in which every input vector is loaded once for all 7 taps that use it (image edges go through a small
zero-padded copy). For C=256 at 4x64x64 it takes 2.5 ms against oneDNN's 57.5 ms, about what oneDNN's forward
takes (2.7 ms). The sum's order depends on the thread count (not on anything else), like a parallel
reduction's.

It is C++, compiled at first use with ``torch.utils.cpp_extension.load_inline`` (g++ and ninja; about 20 s
on 2 cores, cached in torch's extensions folder). The build targets an ISA level, not the build machine
(``-march=x86-64-v3`` or ``-v4`` on x86-64, read from /proc/cpuinfo), and the level is part of the extension's
name and so of its build folder: a home folder shared by different CPUs keeps one build per level, and a CPU
never loads a build for instructions it lacks. Where the build fails, :func:`available` is False, the blocks
keep oneDNN's weight gradient, and one warning says why. ``LVAE_CPU_KERNELS=0`` turns it off.
"""
import contextlib
import logging
import os
import platform
import sys
import warnings

import torch

from lvae.errors import first_line

_SOURCE = r'''
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

typedef float v16 __attribute__((vector_size(64)));
static inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
static inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// Output columns of the tile that starts at column x0 of a row of W: 14, then 4, then 1 at the row's end.
static inline int64_t tile_width(int64_t x0, int64_t W) { return x0 + 14 <= W ? 14 : x0 + 4 <= W ? 4 : 1; }

// The n taps from column x0 of a row (pixel stride C) into pad, 16 floats each, zero outside columns [0, W).
static inline void copy_padded(float* pad, const float* xrow, int64_t x0, int64_t n, int64_t W, int64_t C) {
    for (int64_t j = 0; j < n; ++j) {
        const int64_t xx = x0 + j;
        store16(pad + j * 16, xx >= 0 && xx < W ? load16(xrow + xx * C) : v16{});
    }
}

// acc[kx] += sum_{q < XT} x[q + kx] * g[q], 16 channels; x points at the tile's first tap. Pixel strides: xs, C.
template <int K, int XT>
static inline void wgrad_tile(float* acc, const float* x, int64_t xs, const float* g, int64_t C) {
    v16 a[K], gv[XT];
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) a[kx] = load16(acc + kx * 16);
#pragma GCC unroll 16
    for (int q = 0; q < XT; ++q) gv[q] = load16(g + q * C);
#pragma GCC unroll 32
    for (int j = 0; j < XT + K - 1; ++j) {
        const v16 xv = load16(x + j * xs);
#pragma GCC unroll 16
        for (int kx = 0; kx < K; ++kx) {
            const int q = j - kx;
            if (q >= 0 && q < XT) a[kx] += xv * gv[q];
        }
    }
#pragma GCC unroll 16
    for (int kx = 0; kx < K; ++kx) store16(acc + kx * 16, a[kx]);
}

// x, g: (N, C, H, W) float32 in channels_last memory (NHWC), stride 1, padding k / 2.
// Returns dW (C, 1, k, k): dW[c, ky, kx] = sum_{n, y, x} x[n, c, y + ky - p, x + kx - p] * g[n, c, y, x].
torch::Tensor depthwise_weight_grad(torch::Tensor x, torch::Tensor g, int64_t k) {
    TORCH_CHECK(x.dtype() == torch::kFloat32 && g.dtype() == torch::kFloat32, "float32 tensors expected");
    TORCH_CHECK(x.dim() == 4 && x.sizes() == g.sizes(), "x and g: same (N, C, H, W) shape expected");
    TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast) && g.is_contiguous(at::MemoryFormat::ChannelsLast),
                "channels_last tensors expected");
    TORCH_CHECK(k % 2 == 1, "odd kernel size expected");
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), p = k / 2;
    const float* X = x.data_ptr<float>();
    const float* G = g.data_ptr<float>();
    constexpr int64_t CB = 16;  // channels per block: one 64-byte vector
    const int64_t blocks = (C + CB - 1) / CB, rows = N * H, kk = k * k;
    // Rows are split among the threads; each sums into its own (block, ky, kx, 16) accumulators.
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
    std::vector<float> acc(parts * blocks * kk * CB, 0.f);
    at::parallel_for(0, parts, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float* A = acc.data() + t * blocks * kk * CB;
            float pad[20 * CB];
            for (int64_t r = rows * t / parts; r < rows * (t + 1) / parts; ++r) {
                const int64_t n = r / H, y = r % H;
                const int64_t ky0 = std::max<int64_t>(0, p - y), ky1 = std::min<int64_t>(k, H + p - y);
                const float* grow = G + r * W * C;
                for (int64_t x0 = 0; x0 < W;) {
                    const int64_t xt = tile_width(x0, W);
                    const bool inside = x0 >= p && x0 + xt + p <= W;  // every tap of the tile in the image
                    for (int64_t b = 0; b < blocks; ++b) {
                        const int64_t c0 = b * CB, cn = std::min(CB, C - c0);
                        const float* gt = grow + x0 * C + c0;
                        for (int64_t ky = ky0; ky < ky1; ++ky) {
                            const float* xrow = X + (n * H + y + ky - p) * W * C + c0;
                            float* a = A + (b * k + ky) * k * CB;
                            if (k == 7 && cn == CB) {
                                const float* xt0 = xrow + (x0 - p) * C;
                                int64_t xs = C;
                                if (!inside) {  // the tile's taps, zero outside the image, 16 floats per pixel
                                    copy_padded(pad, xrow, x0 - p, xt + 6, W, C);
                                    xt0 = pad;
                                    xs = CB;
                                }
                                if (xt == 14) wgrad_tile<7, 14>(a, xt0, xs, gt, C);
                                else if (xt == 4) wgrad_tile<7, 4>(a, xt0, xs, gt, C);
                                else wgrad_tile<7, 1>(a, xt0, xs, gt, C);
                                continue;
                            }
                            for (int64_t q = x0; q < x0 + xt; ++q) {  // other kernel sizes, the last channels
                                const float* gv = grow + q * C + c0;
                                const int64_t kx0 = std::max<int64_t>(0, p - q), kx1 = std::min<int64_t>(k, W + p - q);
                                for (int64_t kx = kx0; kx < kx1; ++kx) {
                                    const float* xv = xrow + (q + kx - p) * C;
                                    for (int64_t c = 0; c < cn; ++c) a[kx * CB + c] += xv[c] * gv[c];
                                }
                            }
                        }
                    }
                    x0 += xt;
                }
            }
        }
    });
    auto out = torch::empty({C, 1, k, k}, x.options());
    float* O = out.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < kk; ++t) {
            float s = 0.f;
            for (int64_t i = 0; i < parts; ++i) s += acc[((i * blocks + c / CB) * kk + t) * CB + c % CB];
            O[c * kk + t] = s;
        }
    return out;
}
'''

_module = None
_failed = False
# x86-64 ISA levels (gcc and clang's -march names) and the /proc/cpuinfo flags each needs beyond the one before
_X86_LEVELS = (('x86-64-v3', {'cx16', 'lahf_lm', 'popcnt', 'sse4_1', 'sse4_2', 'ssse3',  # v2
                              'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave'}),
               ('x86-64-v4', {'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'}))


def _cpu_flags():
    """The ISA flags of this CPU (/proc/cpuinfo's first ``flags`` line), or an empty set where unknown."""
    try:
        with open('/proc/cpuinfo') as f:
            return set(next(line for line in f if line.startswith('flags')).split(':', 1)[1].split())
    except (OSError, StopIteration):
        return set()


def isa_level():
    """The highest x86-64 ISA level this CPU has (``'x86-64-v3'`` or ``'x86-64-v4'``), or None (older x86-64,
    other architectures, or flags unknown: the build then targets the compiler's default)."""
    if platform.machine().lower() not in ('x86_64', 'amd64'):
        return None
    flags, level, needed = _cpu_flags(), None, set()
    for name, extra in _X86_LEVELS:
        needed |= extra
        if not needed <= flags:
            break
        level = name
    return level


@contextlib.contextmanager
def _logger_level(name, level):
    """Logger ``name`` at ``level`` inside the block, restored after."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


def available():
    """True when the kernel is loaded, building it on the first call (once per ISA level, Python and torch
    version, in torch's extensions folder); False where it cannot be built or ``LVAE_CPU_KERNELS=0``."""
    global _module, _failed
    if _module is not None or _failed:
        return _module is not None
    if os.environ.get('LVAE_CPU_KERNELS', '1') == '0':
        _failed = True
        return False
    with _logger_level('torch.utils.cpp_extension', logging.ERROR):  # "no CUDA runtime": CPU-only here
        from torch.utils.cpp_extension import get_default_build_root, load_inline
    level = isa_level()
    name = f"lvae_cpu_kernels_{(level or platform.machine() or 'generic').replace('-', '_')}"
    # one folder per Python, torch and ISA level (torch's default is per Python and CUDA version only)
    versions = f'py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__}'
    folder = os.path.join(os.environ.get('TORCH_EXTENSIONS_DIR') or get_default_build_root(), versions, name)
    if not os.path.isfile(os.path.join(folder, f'{name}.so')):
        print(f'lvae: building the CPU depthwise-convolution kernel for {level or platform.machine()} '
              f'(once: about 20 s)', file=sys.stderr, flush=True)
    try:
        flags = ['-O3', '-fopenmp'] + ([f'-march={level}'] if level else [])
        os.makedirs(folder, exist_ok=True)
        _module = load_inline(name, cpp_sources=_SOURCE, functions=['depthwise_weight_grad'], extra_cflags=flags,
                              extra_ldflags=['-fopenmp'], build_directory=folder)
    except Exception as e:  # no compiler, no ninja, a failed build: oneDNN's gradient stays
        _failed = True
        warnings.warn(f'lvae: could not build the CPU depthwise-convolution kernel ({type(e).__name__}: '
                      f"{first_line(e)}); using oneDNN's weight gradient (slower CPU training). Set "
                      f'LVAE_CPU_KERNELS=0 to skip the attempt.')
    return _module is not None


def depthwise_weight_grad(x, grad_out, kernel_size):
    """Weight gradient of a stride-1, 'same'-padded depthwise convolution: x, grad_out (N, C, H, W) float32
    channels_last -> (C, 1, k, k). Call :func:`available` first."""
    return _module.depthwise_weight_grad(x, grad_out, kernel_size)

