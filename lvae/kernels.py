"""A CPU kernel for the weight gradient of the ConvNeXt blocks' depthwise convolution.

oneDNN computes that gradient at about 7 GFLOP/s on a 2-core Xeon (25x slower than the same convolution's
forward), and it was a quarter of a CPU training step of rd_model_base. The kernel here reduces over the
batch and the image for 16 channels at a time, with the rows it reads held in L1 (7.25 ms against 51.8 ms
for C=256 at 4x64x64). It is C++, compiled at first use with ``torch.utils.cpp_extension.load_inline`` (g++
and ninja; about 20 s on 2 cores, cached in torch's extensions folder). Where that fails, :func:`available`
is False, the blocks keep the oneDNN path, and one warning says why. ``LVAE_CPU_KERNELS=0`` turns it off.
"""
import logging
import os
import sys
import warnings

_SOURCE = r'''
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <vector>

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
    auto out = torch::zeros({k, k, C}, x.options());
    float* O = out.data_ptr<float>();
    constexpr int64_t CB = 16;  // channels per block: one 64-byte cache line
    const int64_t blocks = (C + CB - 1) / CB;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        std::vector<float> acc(k * k * CB);
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t c0 = b * CB, cn = std::min(CB, C - c0);
            std::fill(acc.begin(), acc.end(), 0.f);
            for (int64_t n = 0; n < N; ++n) {
                for (int64_t y = 0; y < H; ++y) {
                    const float* grow = G + (n * H + y) * W * C + c0;
                    for (int64_t ky = 0; ky < k; ++ky) {
                        const int64_t yy = y + ky - p;
                        if (yy < 0 || yy >= H) continue;
                        const float* xrow = X + (n * H + yy) * W * C + c0;
                        for (int64_t kx = 0; kx < k; ++kx) {
                            const int64_t lo = std::max<int64_t>(0, p - kx), hi = std::min<int64_t>(W, W + p - kx);
                            float s[CB] = {0.f};
                            if (cn == CB) {
                                for (int64_t i = lo; i < hi; ++i) {
                                    const float* xv = xrow + (i + kx - p) * C;
                                    const float* gv = grow + i * C;
#pragma omp simd
                                    for (int64_t c = 0; c < CB; ++c) s[c] += xv[c] * gv[c];
                                }
                            } else {
                                for (int64_t i = lo; i < hi; ++i) {
                                    const float* xv = xrow + (i + kx - p) * C;
                                    const float* gv = grow + i * C;
                                    for (int64_t c = 0; c < cn; ++c) s[c] += xv[c] * gv[c];
                                }
                            }
                            float* a = acc.data() + (ky * k + kx) * CB;
                            for (int64_t c = 0; c < CB; ++c) a[c] += s[c];
                        }
                    }
                }
            }
            for (int64_t t = 0; t < k * k; ++t)
                for (int64_t c = 0; c < cn; ++c) O[t * C + c0 + c] = acc[t * CB + c];
        }
    });
    return out.permute({2, 0, 1}).unsqueeze(1);
}
'''

_module = None
_failed = False


def available():
    """True when the kernel is loaded, building it on the first call (once per machine; torch caches the
    build); False where it cannot be built or ``LVAE_CPU_KERNELS=0``."""
    global _module, _failed
    if _module is not None or _failed:
        return _module is not None
    if os.environ.get('LVAE_CPU_KERNELS', '1') == '0':
        _failed = True
        return False
    print('lvae: loading the CPU depthwise-gradient kernel (the first time on a machine, it is built: about 20 s)',
          file=sys.stderr)
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)  # "no CUDA runtime": CPU-only here
    from torch.utils.cpp_extension import load_inline
    try:
        flags = ['-O3', '-march=native', '-fopenmp']
        _module = load_inline('lvae_cpu_kernels', cpp_sources=_SOURCE, functions=['depthwise_weight_grad'],
                              extra_cflags=flags, extra_ldflags=['-fopenmp'])
    except Exception as e:  # no compiler, no ninja, a failed build: the oneDNN path stays
        _failed = True
        first = str(e).strip().splitlines()[0] if str(e).strip() else ''
        warnings.warn(f'lvae: could not build the CPU depthwise-gradient kernel ({type(e).__name__}: {first}); '
                      f'using oneDNN (slower CPU training). Set LVAE_CPU_KERNELS=0 to skip the attempt.')
    return _module is not None


def depthwise_weight_grad(x, grad_out, kernel_size):
    """Weight gradient of a stride-1, 'same'-padded depthwise convolution: x, grad_out (N, C, H, W) float32
    channels_last -> (C, 1, k, k). Call :func:`available` first."""
    return _module.depthwise_weight_grad(x, grad_out, kernel_size)
