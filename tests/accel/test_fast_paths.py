"""A model prepared by lvae.accel computes what the reference model computes, in values and gradients: the CPU
ConvNeXt block (AdaLN folded into fc1, gamma into fc2, channels_last; at inference either of its two forms),
training and inference, one image and several, and the compiled blocks."""
import pytest
import torch

import lvae
from lvae import accel
from lvae.layers import ConvNeXtBlockAdaLN


def block_outputs(block, x, emb):
    """Output and gradients (input, embedding, every parameter) of ``block``."""
    x, emb = x.detach().clone().requires_grad_(), emb.detach().clone().requires_grad_()
    block.zero_grad(set_to_none=True)
    y = block(x, emb)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return [y, x.grad, emb.grad] + [p.grad for p in block.parameters()]


def block_pair(dim=16, memory_format=torch.channels_last):
    """A reference block with a trained-like branch weight (so that the branch shows in the output) and a CPU
    block with the same weights."""
    torch.manual_seed(0)
    ref = ConvNeXtBlockAdaLN(dim, 8)
    with torch.no_grad():
        ref.gamma.fill_(0.5)
    fast = ConvNeXtBlockAdaLN(dim, 8).to(memory_format=memory_format)
    fast.load_state_dict(ref.state_dict())
    fast.__class__ = accel.CPUConvNeXtBlock
    return ref, fast


def assert_all_close(actual, expected):
    for b, a in zip(actual, expected):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@pytest.mark.parametrize('size', [(4, 4), (12, 10)])  # 16 pixels: AdaLN as a pass; 120 pixels: folded into fc1
@pytest.mark.parametrize('batch', [1, 3])
def test_cpu_block_gives_the_reference_values_and_gradients(size, batch):
    ref, fast = block_pair()
    x, emb = torch.randn(batch, 16, *size), torch.randn(batch, 8)  # images with different conditioning
    assert_all_close(block_outputs(fast, x.contiguous(memory_format=torch.channels_last), emb),
                     block_outputs(ref, x, emb))


def always(form):
    """A stand-in for ``accel.inference_forms`` that runs ``form`` without timing anything."""
    return lambda key, forms: forms[form]()


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('form', ['reference', 'onednn'])
def test_cpu_block_inference_forms_give_the_reference_values(batch, form, monkeypatch):
    """Without autograd the CPU block runs no fold; either inference form gives the reference block's output, in
    channels_last."""
    ref, fast = block_pair()
    folded, called = [], []
    fold, onednn = accel.CPUConvNeXtBlock._fc1_folded, accel.CPUConvNeXtBlock._forward_onednn
    monkeypatch.setattr(accel.CPUConvNeXtBlock, '_fc1_folded', lambda *a: folded.append(1) or fold(*a))
    monkeypatch.setattr(accel.CPUConvNeXtBlock, '_forward_onednn', lambda *a: called.append(1) or onednn(*a))
    monkeypatch.setattr(accel.blocks, 'inference_forms', always(form))
    x, emb = torch.randn(batch, 16, 12, 10), torch.randn(batch, 8)
    with torch.inference_mode():
        out = fast(x.contiguous(memory_format=torch.channels_last), emb)
        expected = ref(x, emb)
    assert folded == [] and called == ([1] if form == 'onednn' else [])
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    fast(x.contiguous(memory_format=torch.channels_last), emb).sum().backward()
    assert folded == [1] and called == ([1] if form == 'onednn' else [])  # a training step takes neither


def test_faster_form_runs_the_form_that_timed_faster_and_remembers_it_per_key():
    """Times come from a clock that the forms themselves advance: 'slow' takes 3 ticks, 'fast' 1."""
    clock, calls = [0.0], []

    def form(name, ticks):
        def run():
            calls.append(name)
            clock[0] += ticks
            return name
        return run

    chooser = accel.FasterForm(rounds=2, timer=lambda: clock[0])
    forms = {'slow': form('slow', 3), 'fast': form('fast', 1)}
    assert chooser('a', forms) == 'fast'
    assert calls == ['slow', 'fast'] * 3  # one untimed call each, then two timed rounds in turns
    calls.clear()
    assert chooser('a', forms) == 'fast' and calls == ['fast']
    forms['fast'] = form('fast', 5)  # another key is measured anew
    assert chooser('b', forms) == 'slow'
    assert chooser.chosen == {'a': 'fast', 'b': 'slow'}


def test_prepared_model_chooses_a_form_once_per_block_shape(monkeypatch):
    """The first evaluation forward times both forms for each block input shape; the next runs each block once."""
    monkeypatch.setattr(accel.blocks, 'inference_forms', accel.FasterForm())
    runs = []
    for name in ('_forward_onednn', '_forward_reference'):
        original = getattr(accel.CPUConvNeXtBlock, name)
        monkeypatch.setattr(accel.CPUConvNeXtBlock, name, lambda *a, f=original: runs.append(1) or f(*a))
    torch.manual_seed(0)
    model = accel.prepare(lvae.get_model('rd_model_tiny').eval(), 'cpu')
    blocks = [m for m in model.modules() if isinstance(m, ConvNeXtBlockAdaLN)]
    im = torch.rand(1, 3, 64, 128)
    with torch.inference_mode():
        model.forward_end2end(im, torch.tensor([64.0]))
        shapes = set(accel.blocks.inference_forms.chosen)
        assert len(shapes) > 1 and set(accel.blocks.inference_forms.chosen.values()) <= {'reference', 'onednn'}
        assert len(runs) == len(blocks) + 5 * len(shapes)  # per new shape: 2 forms x (1 untimed + 2 timed)
        runs.clear()
        model.forward_end2end(im, torch.tensor([512.0]))
    assert len(runs) == len(blocks) and set(accel.blocks.inference_forms.chosen) == shapes


def test_faster_form_keeps_the_first_form_on_a_tie():
    chooser = accel.FasterForm(timer=lambda: 0.0)
    assert chooser('k', {'reference': lambda: 1, 'other': lambda: 2}) == 1


def test_cpu_block_takes_nchw_inputs():
    ref, fast = block_pair(memory_format=torch.contiguous_format)
    x, emb = torch.randn(2, 16, 12, 10), torch.randn(2, 8)
    assert_all_close(block_outputs(fast, x, emb), block_outputs(ref, x, emb))


def model_outputs(model, im, lmb):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(im, lmb=lmb)
    out['loss'].backward()
    return out, {k: p.grad.clone() for k, p in model.named_parameters()}


def assert_same_training_step(model, reference_outputs, im, lmb):
    ref, ref_grads = reference_outputs
    out, grads = model_outputs(model, im, lmb)
    assert out['loss'].item() == pytest.approx(ref['loss'].item(), rel=1e-5)
    for key in ('bppix', 'psnr'):
        assert out[key].item() == pytest.approx(ref[key].item(), rel=1e-5)
    for key, g in ref_grads.items():
        # sums over many pixels: compared at float32 rounding of the largest gradient of the tensor
        torch.testing.assert_close(grads[key], g, rtol=1e-4, atol=1e-5 * g.abs().max().item(), msg=key)


def test_prepared_model_gives_the_reference_loss_and_gradients():
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    im, lmb = torch.rand(2, 3, 128, 128), torch.tensor([8.0, 512.0])
    reference = model_outputs(model, im, lmb)
    assert_same_training_step(accel.prepare(model, 'cpu'), reference, im, lmb)


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('form', ['reference', 'onednn'])
def test_prepared_model_gives_the_reference_evaluation_forward(batch, form, monkeypatch):
    monkeypatch.setattr(accel.blocks, 'inference_forms', always(form))
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny').eval()
    im, lmb = torch.rand(batch, 3, 128, 192), torch.linspace(4, 2048, batch)

    def forward():
        torch.manual_seed(1)
        with torch.inference_mode():
            x_hat, stats = model.forward_end2end(im, lmb)
        return x_hat, model.kl_per_image(stats)
    x_ref, kl_ref = forward()
    accel.prepare(model, 'cpu')
    x_hat, kl = forward()
    torch.testing.assert_close(x_hat, x_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(kl, kl_ref, rtol=1e-5, atol=0)


@pytest.mark.slow  # torch.compile: tens of seconds on a CPU
def test_compiled_blocks_give_the_reference_loss_and_gradients():
    """``prepare(..., compile=True)`` (what train-var-rate.py --compile does), here with the ``aot_eager``
    backend: the forward and backward graphs traced, no C++ compiler needed; same loss and gradients."""
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    im, lmb = torch.rand(2, 3, 64, 64), torch.tensor([8.0, 512.0])
    reference = model_outputs(model, im, lmb)
    keys = list(model.state_dict())
    assert accel.prepare(model, 'cpu', compile=True, backend='aot_eager') is model
    assert accel.is_compiled(model)
    assert list(model.state_dict()) == keys
    assert_same_training_step(model, reference, im, lmb)
    accel.reference(model)
    assert not accel.is_compiled(model)


@pytest.mark.parametrize('prepared', [False, True])
def test_bf16_autocast_runs_near_fp32(prepared):
    """--amp bf16 on a CPU (training loss and gradients, and the evaluation forward), reference and prepared
    (whose blocks take the reference forward under autocast)."""
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    if prepared:
        accel.prepare(model, 'cpu')
    im, lmb = torch.rand(2, 3, 64, 64), torch.tensor([8.0, 512.0])
    ref, _ = model_outputs(model, im, lmb)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, grads = model_outputs(model, im, lmb)
        with torch.inference_mode():
            x_hat, stats = model.forward_end2end(im, lmb)
    assert out['loss'].item() == pytest.approx(ref['loss'].item(), rel=0.05)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert x_hat.shape == im.shape and all(torch.isfinite(s['kl']).all() for s in stats)
