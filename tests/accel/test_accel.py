"""lvae.accel's contract: prepare() converts one model in place (idempotent, same state dict), reference() undoes
it, and evaluate_bound gives the caller's model back as it came."""
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae import accel
from lvae.evaluation import evaluate_bound
from lvae.layers import ConvNeXtAdaLNPatchDown, ConvNeXtBlockAdaLN


def state_hash(model):
    """SHA-256 of the state dict's keys and values (layout-independent)."""
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def block_classes(model):
    return [type(m) for m in model.modules() if isinstance(m, ConvNeXtBlockAdaLN)]


def is_channels_last(model):
    return model.encoder.enc_blocks[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return lvae.get_model('rd_model_tiny')


def test_prepare_on_cpu_swaps_the_blocks_and_the_layout_in_place_and_keeps_the_state_dict(tiny):
    keys, digest = list(tiny.state_dict()), state_hash(tiny)
    params = list(tiny.parameters())
    assert accel.prepare(tiny, 'cpu') is tiny
    assert is_channels_last(tiny)
    assert set(block_classes(tiny)) == {accel.CPUConvNeXtBlock, accel.CPUConvNeXtAdaLNPatchDown}
    assert all(isinstance(m, ConvNeXtAdaLNPatchDown) for m in tiny.modules()
               if isinstance(m, accel.CPUConvNeXtAdaLNPatchDown))
    assert list(tiny.state_dict()) == keys and state_hash(tiny) == digest
    assert all(a is b for a, b in zip(params, tiny.parameters()))  # an optimizer keeps its parameters


def test_prepare_is_idempotent(tiny):
    accel.prepare(tiny, 'cpu')
    classes, digest = block_classes(tiny), state_hash(tiny)
    accel.prepare(tiny, 'cpu')
    assert block_classes(tiny) == classes and is_channels_last(tiny) and state_hash(tiny) == digest


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_reference_undoes_prepare(tiny, memory_format):
    tiny.to(memory_format=memory_format)
    classes, digest = block_classes(tiny), state_hash(tiny)
    accel.reference(accel.prepare(accel.prepare(tiny, 'cpu'), 'cpu'))
    assert block_classes(tiny) == classes and state_hash(tiny) == digest
    assert is_channels_last(tiny) == (memory_format == torch.channels_last)
    assert not hasattr(tiny, accel.forms._STATE)


def test_other_devices_get_the_reference_blocks_in_nchw(tiny):
    """Off the CPU (here the meta device, which stands for CUDA), the model is NCHW with reference blocks, also
    after a CPU prepare."""
    accel.prepare(tiny, 'cpu')
    accel.prepare(tiny, 'meta')
    assert set(block_classes(tiny)) == {ConvNeXtBlockAdaLN, ConvNeXtAdaLNPatchDown}
    assert tiny.encoder.enc_blocks[0].weight.device.type == 'meta'
    assert tiny.encoder.enc_blocks[0].weight.is_contiguous()


def test_prepare_and_the_prepared_forward_leave_the_global_rng_alone(tiny):
    """Only the model's own draws (one per latent) move the global RNG, as in the reference model."""
    im, lmb = torch.rand(1, 3, 64, 64), torch.tensor([64.0])
    torch.manual_seed(3)
    with torch.no_grad():
        tiny.forward_end2end(im, lmb)
    after_reference = torch.rand(4)
    torch.manual_seed(3)
    accel.prepare(tiny, 'cpu')
    with torch.no_grad():
        tiny.forward_end2end(im, lmb)
    assert torch.equal(torch.rand(4), after_reference)


def test_a_failed_compile_warns_and_leaves_the_eager_cpu_blocks(tiny):
    def broken(gm, example_inputs):
        raise RuntimeError('no C++ compiler here')

    torch._dynamo.reset()
    with pytest.warns(UserWarning, match='torch.compile failed'):
        accel.prepare(tiny, 'cpu', compile=True, backend=broken)
    assert not accel.is_compiled(tiny)
    assert accel.CPUConvNeXtBlock in block_classes(tiny)


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / 'im.png'
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize('prepared', [False, True])
def test_evaluate_bound_gives_the_model_back_as_it_came(tiny, image_file, prepared):
    """Device, memory format, training flag, block classes and weights (a state-dict hash) after the call,
    for a reference model in training mode and for a prepared one."""
    if prepared:
        accel.prepare(tiny, 'cpu')
    tiny.train()
    before = (block_classes(tiny), is_channels_last(tiny), state_hash(tiny), tiny.bias.device)
    result = evaluate_bound(tiny, [image_file], lambdas=[64.0], device='cpu', progress=False)
    assert np.isfinite(result['bpp'][0])
    assert tiny.training
    assert (block_classes(tiny), is_channels_last(tiny), state_hash(tiny), tiny.bias.device) == before
    assert hasattr(tiny, accel.forms._STATE) == prepared
