"""The fast paths compute what the reference path computes: the AdaLN fold of the ConvNeXt block, the fused
inference kernels, channels_last models, in values and gradients."""
import pytest
import torch

import lvae
import lvae.kernels
import lvae.layers
from lvae.layers import ConvNeXtBlockAdaLN

NEVER, ALWAYS = float('inf'), 0


def block_outputs(block, x, emb, fold, monkeypatch):
    """Output and gradients (input, embedding, every parameter) of ``block`` with the fold on or off."""
    monkeypatch.setattr(lvae.layers, 'FOLD_PIXELS_PER_CHANNEL', ALWAYS if fold else NEVER)
    x, emb = x.detach().clone().requires_grad_(), emb.detach().clone().requires_grad_()
    block.zero_grad(set_to_none=True)
    y = block(x, emb)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y, x.grad, emb.grad] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_adaln_fold_matches_the_reference_block(memory_format, monkeypatch):
    torch.manual_seed(0)
    block = ConvNeXtBlockAdaLN(16, 8).to(memory_format=memory_format)
    with torch.no_grad():
        block.gamma.fill_(0.5)  # a trained-like branch weight, so that the branch shows in the output
    x = torch.randn(3, 16, 12, 10).contiguous(memory_format=memory_format)
    emb = torch.randn(3, 8)  # three images with different conditioning
    ref = block_outputs(block, x, emb, False, monkeypatch)
    fast = block_outputs(block, x, emb, True, monkeypatch)
    for a, b in zip(ref, fast):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_the_fold_is_used_at_high_resolution_only(monkeypatch):
    block = ConvNeXtBlockAdaLN(16, 8)
    calls = []
    monkeypatch.setattr(ConvNeXtBlockAdaLN, '_fc1_folded', lambda self, h, shift, scale: calls.append(h.shape)
                        or self.mlp.fc1(torch.addcmul(shift[:, None, None], h, 1 + scale[:, None, None])))
    block(torch.randn(1, 16, 4, 4), torch.randn(1, 8))  # 16 pixels < 2 x 16 channels
    assert calls == []
    block(torch.randn(1, 16, 8, 4), torch.randn(1, 8))  # 32 pixels
    assert calls == [(1, 8, 4, 16)]


onednn = pytest.mark.skipif(not lvae.layers._onednn_linear_works(), reason="this torch has no oneDNN fused linears")


@onednn
@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('fold', [False, True])
def test_fused_inference_path_matches_the_plain_block(batch, fold, monkeypatch):
    """Without autograd, channels_last blocks run fc1 + GELU and fc2 + residual as oneDNN calls (and, where
    lvae.kernels builds, the depthwise convolution + LayerNorm as one kernel); they give what the plain ops
    give, for one image (affine folded into fc1) and several (affine as a pass)."""
    torch.manual_seed(0)
    block = ConvNeXtBlockAdaLN(16, 8).to(memory_format=torch.channels_last)
    with torch.no_grad():
        block.gamma.fill_(0.5)
    x = torch.randn(batch, 16, 12, 10).contiguous(memory_format=torch.channels_last)
    emb = torch.randn(batch, 8)
    monkeypatch.setattr(lvae.layers, 'FOLD_PIXELS_PER_CHANNEL', ALWAYS if fold else NEVER)
    calls = []
    fused = ConvNeXtBlockAdaLN._fc1_gelu_onednn
    monkeypatch.setattr(ConvNeXtBlockAdaLN, '_fc1_gelu_onednn', lambda *a: calls.append(1) or fused(*a))
    with torch.inference_mode():
        monkeypatch.setattr(lvae.layers, 'FUSED_INFERENCE', False)
        ref = block(x, emb)
        assert calls == []
        monkeypatch.setattr(lvae.layers, 'FUSED_INFERENCE', True)
        out = block(x, emb)
        assert calls == [1]
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_the_fused_inference_kernels_stay_out_of_autograd(monkeypatch):
    """Where autograd records (training), the blocks keep the differentiable path: neither oneDNN's fused
    linears nor the fused depthwise convolution + LayerNorm kernel (which have no backward) run."""
    block = ConvNeXtBlockAdaLN(16, 8).to(memory_format=torch.channels_last)
    calls = []
    monkeypatch.setattr(ConvNeXtBlockAdaLN, '_fc1_gelu_onednn', lambda *a: calls.append('fc1'))
    monkeypatch.setattr(lvae.kernels, 'depthwise_conv_layer_norm', lambda *a: calls.append('dwconv'))
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    block(x, torch.randn(1, 8)).sum().backward()
    assert calls == [] and block.mlp.fc1.weight.grad is not None


def test_the_onednn_check_leaves_the_global_rng_alone():
    """The one-time check of oneDNN's fused linears runs inside the first evaluation forward, between posterior
    draws: it must not draw random numbers of its own."""
    lvae.layers._onednn_linear_works.cache_clear()
    torch.manual_seed(0)
    lvae.layers._onednn_linear_works()
    after_check = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_check, torch.rand(4))


def model_outputs(model, im, lmb):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(im, lmb=lmb)
    out['loss'].backward()
    return out, {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize('fold', [False, True])
def test_channels_last_and_fold_give_the_reference_loss_and_gradients(fold, monkeypatch):
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    im, lmb = torch.rand(2, 3, 128, 128), torch.tensor([8.0, 512.0])
    monkeypatch.setattr(lvae.layers, 'FOLD_PIXELS_PER_CHANNEL', NEVER)
    ref, ref_grads = model_outputs(model, im, lmb)
    monkeypatch.setattr(lvae.layers, 'FOLD_PIXELS_PER_CHANNEL', ALWAYS if fold else NEVER)
    keys = list(model.state_dict())
    model.to(memory_format=torch.channels_last)
    out, grads = model_outputs(model, im, lmb)
    assert list(model.state_dict()) == keys
    for key in ('loss', 'bppix', 'psnr'):
        assert float(torch.as_tensor(out[key]).detach()) == pytest.approx(float(torch.as_tensor(ref[key]).detach()),
                                                                        rel=1e-5)
    for key, g in ref_grads.items():
        torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-6 * g.abs().max().item(), msg=key)


def test_compiled_blocks_give_the_reference_loss_and_gradients():
    """``compile_blocks`` (what train-var-rate.py --compile does), here with the ``aot_eager`` backend: the
    forward and backward graphs traced, no C++ compiler needed; same loss, gradients and state-dict keys."""
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    im, lmb = torch.rand(2, 3, 64, 64), torch.tensor([8.0, 512.0])
    ref, ref_grads = model_outputs(model, im, lmb)
    keys = list(model.state_dict())
    assert model.compile_blocks(backend='aot_eager') is model
    out, grads = model_outputs(model, im, lmb)
    assert list(model.state_dict()) == keys
    assert out['loss'].item() == pytest.approx(ref['loss'].item(), rel=1e-5)
    for key, g in ref_grads.items():
        torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-6 * g.abs().max().item(), msg=key)


def test_preferred_memory_format_is_channels_last_on_cpu_only():
    assert lvae.layers.preferred_memory_format('cpu') == torch.channels_last
    assert lvae.layers.preferred_memory_format(torch.device('cuda', 0)) == torch.contiguous_format


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_bf16_autocast_runs_in_both_layouts_near_fp32(memory_format):
    """--amp bf16 on a CPU (training loss and gradients, and the evaluation forward) in either layout."""
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny').to(memory_format=memory_format)
    im, lmb = torch.rand(2, 3, 64, 64), torch.tensor([8.0, 512.0])
    ref, _ = model_outputs(model, im, lmb)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, grads = model_outputs(model, im, lmb)
        with torch.inference_mode():
            x_hat, stats = model.forward_end2end(im, lmb)
    assert out['loss'].item() == pytest.approx(ref['loss'].item(), rel=0.05)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert x_hat.shape == im.shape and all(torch.isfinite(s['kl']).all() for s in stats)
