"""lvae.accel.kernels: the CPU weight gradient of the depthwise convolution against ATen's, its use in the prepared
blocks, the build (per ISA level) and its fallback."""
import os

import pytest
import torch
import torch.utils.cpp_extension

import lvae
from lvae import accel
from lvae.accel import kernels
from test_fast_paths import block_outputs, block_pair


@pytest.fixture(scope='module')
def built():
    """The kernel, built; skipped where it cannot be (no g++ or ninja), except in CI, where that fails."""
    if not kernels.available():
        if os.environ.get('CI'):
            pytest.fail('the CPU kernel did not build (see the warning above); CI must run it')
        pytest.skip("the CPU kernel could not be built here (no g++ or ninja); the blocks use oneDNN's gradient")


def aten_weight_grad(x, g, w):
    k = w.shape[-1]
    return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0],
                                               x.shape[1], [False, True, False])[1]


@pytest.mark.parametrize('shape, k', [((2, 20, 9, 5), 7), ((3, 48, 17, 31), 7), ((2, 24, 6, 22), 7),
                                      ((1, 16, 2, 3), 7), ((2, 33, 8, 8), 3)])
def test_weight_grad_matches_aten(built, shape, k):
    """Channels not a multiple of the 16-channel block; rows of 31 and 22 columns (the kernel's 14-, 4- and
    1-column tiles, inside the image and at its edges); images smaller than the kernel; other kernel sizes."""
    torch.manual_seed(0)
    x, g = (torch.randn(shape).contiguous(memory_format=torch.channels_last) for _ in range(2))
    w = torch.randn(shape[1], 1, k, k)
    ref = aten_weight_grad(x, g, w)  # sums of up to 1,581 products: compare at float32's rounding of the scale
    torch.testing.assert_close(kernels.depthwise_weight_grad(x, g, k), ref, rtol=0, atol=2e-6 * ref.abs().max())


def test_cpu_block_gradients_come_from_the_kernel_and_match_the_reference(built, monkeypatch):
    ref, fast = block_pair(dim=32)
    x, emb = torch.randn(2, 32, 12, 10), torch.randn(2, 8)
    used = []
    monkeypatch.setattr(kernels, 'depthwise_weight_grad',
                        lambda *a, f=kernels.depthwise_weight_grad: used.append(1) or f(*a))
    out = block_outputs(fast, x.contiguous(memory_format=torch.channels_last), emb)
    assert used == [1]
    for a, b in zip(block_outputs(ref, x, emb), out):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_the_weight_gradient_kernel_stays_out_of_inference(built, monkeypatch):
    """Without autograd the CPU block runs the plain convolution: no autograd function, no saved tensors."""
    _, fast = block_pair(dim=32)
    monkeypatch.setattr(accel.blocks._DepthwiseConvCPU, 'apply', lambda *a: pytest.fail('autograd function used'))
    with torch.inference_mode():
        fast(torch.randn(1, 32, 8, 8).contiguous(memory_format=torch.channels_last), torch.randn(1, 8))


def test_a_prepared_model_trains_where_the_kernel_is_off(monkeypatch):
    monkeypatch.setattr(kernels, '_module', None)
    monkeypatch.setattr(kernels, '_failed', False)
    monkeypatch.setenv('LVAE_CPU_KERNELS', '0')
    model = accel.prepare(lvae.get_model('rd_model_tiny'), 'cpu')
    model(torch.rand(1, 3, 64, 64), lmb=torch.tensor([64.0]))['loss'].backward()
    assert kernels.available() is False
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_failed_build_warns_once_and_leaves_onednns_gradient(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError('Ninja is required to load C++ extensions')
    monkeypatch.setattr(torch.utils.cpp_extension, 'load_inline', no_compiler)
    monkeypatch.setattr(kernels, '_module', None)
    monkeypatch.setattr(kernels, '_failed', False)
    monkeypatch.delenv('LVAE_CPU_KERNELS', raising=False)
    with pytest.warns(UserWarning, match='could not build the CPU depthwise-convolution kernel.*Ninja is required'):
        assert kernels.available() is False
    assert kernels.available() is False  # no second attempt, no second warning


V3 = {'cx16', 'lahf_lm', 'popcnt', 'sse4_1', 'sse4_2', 'ssse3', 'avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma',
      'abm', 'movbe', 'xsave'}
V4 = V3 | {'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'}


@pytest.mark.parametrize('flags, level', [(V4, 'x86-64-v4'), (V3, 'x86-64-v3'), (V4 - {'avx512vl'}, 'x86-64-v3'),
                                          (V3 - {'fma'}, None), (set(), None)])
def test_the_build_targets_the_cpus_isa_level_and_is_named_after_it(flags, level, monkeypatch, tmp_path):
    """No -march=native: a build is for an ISA level, in a folder of its own, so that a home folder shared by
    different CPUs never hands one a build with instructions it lacks."""
    calls = []
    monkeypatch.setattr(kernels, '_cpu_flags', lambda: flags)
    monkeypatch.setattr(kernels.platform, 'machine', lambda: 'x86_64')
    monkeypatch.setattr(torch.utils.cpp_extension, 'load_inline', lambda name, **kw: calls.append((name, kw)))
    monkeypatch.setattr(kernels, '_module', None)
    monkeypatch.setattr(kernels, '_failed', False)
    monkeypatch.delenv('LVAE_CPU_KERNELS', raising=False)
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    assert kernels.isa_level() == level
    kernels.available()
    (name, kw), = calls
    march = [f for f in kw['extra_cflags'] if f.startswith('-march')]
    assert march == ([f'-march={level}'] if level else [])
    assert name == 'lvae_cpu_kernels_' + (level or 'x86_64').replace('-', '_')
    assert kw['build_directory'].startswith(str(tmp_path)) and kw['build_directory'].endswith(name)
