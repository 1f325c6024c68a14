"""lvae.kernels: the CPU weight gradient of the depthwise convolution and its forward fused with LayerNorm,
against ATen's, and the fallback."""
import pytest
import torch
import torch.nn.functional as F

import lvae
import lvae.layers
from lvae import kernels
from test_fast_paths import block_outputs

needs_kernel = pytest.mark.skipif(not kernels.available(), reason='the CPU kernel could not be built here '
                                  '(no g++ or ninja); the blocks use oneDNN instead')


def aten_weight_grad(x, g, w):
    k = w.shape[-1]
    return torch.ops.aten.convolution_backward(g, x, w, None, [1, 1], [k // 2] * 2, [1, 1], False, [0, 0],
                                               x.shape[1], [False, True, False])[1]


@needs_kernel
@pytest.mark.parametrize('shape, k', [((2, 20, 9, 5), 7), ((3, 48, 17, 31), 7), ((2, 24, 6, 22), 7),
                                      ((1, 16, 2, 3), 7), ((2, 33, 8, 8), 3)])
def test_weight_grad_matches_aten(shape, k):
    """Channels not a multiple of the 16-channel block; rows of 31 and 22 columns (the kernel's 14-, 4- and
    1-column tiles, inside the image and at its edges); images smaller than the kernel; other kernel sizes."""
    torch.manual_seed(0)
    x, g = (torch.randn(shape).contiguous(memory_format=torch.channels_last) for _ in range(2))
    w = torch.randn(shape[1], 1, k, k)
    ref = aten_weight_grad(x, g, w)  # sums of up to 1,581 products: compare at float32's rounding of the scale
    torch.testing.assert_close(kernels.depthwise_weight_grad(x, g, k), ref, rtol=0, atol=2e-6 * ref.abs().max())


@needs_kernel
def test_block_gradients_with_the_kernel_match_the_onednn_path(monkeypatch):
    torch.manual_seed(0)
    block = lvae.layers.ConvNeXtBlockAdaLN(32, 8).to(memory_format=torch.channels_last)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, 32, 12, 10).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 8)
    used = []
    monkeypatch.setattr(kernels, 'depthwise_weight_grad',
                        lambda *a, f=kernels.depthwise_weight_grad: used.append(1) or f(*a))
    fast = block_outputs(block, x, emb, True, monkeypatch)
    assert used, 'the kernel was not used'
    monkeypatch.setattr(kernels, 'available', lambda: False)  # as where it cannot be built
    ref = block_outputs(block, x, emb, True, monkeypatch)
    assert len(used) == 1
    for a, b in zip(ref, fast):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@needs_kernel
@pytest.mark.parametrize('shape', [(1, 16, 5, 3), (2, 32, 9, 23), (1, 48, 12, 31), (3, 64, 16, 14)])
def test_conv_layer_norm_matches_aten(shape):
    """Images narrower and shorter than the kernel; rows of 23 and 31 columns (14-, 4- and 1-column tiles, at
    the edges and inside); several images."""
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(shape[1], 1, 7, 7) * 0.2, torch.randn(shape[1])
    ref = F.layer_norm(F.conv2d(x, w, b, padding=3, groups=shape[1]).permute(0, 2, 3, 1), (shape[1],), eps=1e-6)
    out = kernels.depthwise_conv_layer_norm(x, w, b, 1e-6)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)  # outputs of unit scale


@needs_kernel
@pytest.mark.parametrize('dim, used', [(32, True), (40, False)])  # 40: not a multiple of the 16-channel block
def test_evaluation_blocks_use_the_fused_kernel_where_it_fits(dim, used, monkeypatch):
    torch.manual_seed(0)
    block = lvae.layers.ConvNeXtBlockAdaLN(dim, 8).to(memory_format=torch.channels_last)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(2, dim, 12, 10).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(2, 8)
    calls = []
    monkeypatch.setattr(kernels, 'depthwise_conv_layer_norm',
                        lambda *a, f=kernels.depthwise_conv_layer_norm: calls.append(1) or f(*a))
    with torch.inference_mode():
        fast = block(x, emb)
        assert calls == ([1] if used else [])
        monkeypatch.setattr(lvae.layers, 'FUSED_INFERENCE', False)
        ref = block(x, emb)
    assert len(calls) == (1 if used else 0)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_a_model_trains_where_the_kernel_cannot_be_built(monkeypatch):
    monkeypatch.setattr(kernels, '_module', None)
    monkeypatch.setattr(kernels, '_failed', False)
    monkeypatch.setenv('LVAE_CPU_KERNELS', '0')
    model = lvae.get_model('rd_model_tiny').to(memory_format=torch.channels_last)
    model(torch.rand(1, 3, 64, 64), lmb=torch.tensor([64.0]))['loss'].backward()
    assert kernels.available() is False
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_failed_build_warns_once_and_leaves_the_onednn_path(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError('Ninja is required to load C++ extensions')
    monkeypatch.setattr(torch.utils.cpp_extension, 'load_inline', no_compiler)
    monkeypatch.setattr(kernels, '_module', None)
    monkeypatch.setattr(kernels, '_failed', False)
    monkeypatch.delenv('LVAE_CPU_KERNELS', raising=False)
    with pytest.warns(UserWarning, match='could not build the CPU depthwise-convolution kernels.*Ninja is required'):
        assert kernels.available() is False
    assert kernels.available() is False  # no second attempt, no second warning
