"""Converting a model between its reference form and its fastest faithful form for a device: :func:`prepare`,
:func:`reference`, :func:`restoring`, :func:`is_compiled`; see :mod:`lvae.accel`."""
import contextlib
import itertools
import warnings

import torch

from lvae.accel.blocks import CPUConvNeXtAdaLNPatchDown, CPUConvNeXtBlock
from lvae.errors import first_line
from lvae.layers import ConvNeXtAdaLNPatchDown, ConvNeXtBlockAdaLN

_CPU_CLASSES = {ConvNeXtBlockAdaLN: CPUConvNeXtBlock, ConvNeXtAdaLNPatchDown: CPUConvNeXtAdaLNPatchDown}
_REFERENCE_CLASSES = {fast: ref for ref, fast in _CPU_CLASSES.items()}
_STATE = '_accel_reference_formats'  # the attribute where a prepared model keeps its reference memory formats


def _tensors(model):
    return itertools.chain(model.named_parameters(), model.named_buffers())


def _memory_formats(model):
    """{name: memory format} of the model's 4-D parameters and buffers."""
    return {name: torch.channels_last if t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous() else torch.contiguous_format for name, t in _tensors(model) if t.dim() == 4}


def _set_memory_formats(model, formats):
    """Convert the model's 4-D parameters and buffers in place (as ``Module.to`` does) to ``formats``."""
    for name, t in _tensors(model):
        if name in formats:
            t.data = t.data.contiguous(memory_format=formats[name])


def _set_block_classes(model, classes):
    """Set each ConvNeXt block's class through ``classes`` (a {from: to} map); returns the blocks."""
    blocks = [m for m in model.modules() if isinstance(m, ConvNeXtBlockAdaLN)]
    for block in blocks:
        block.__class__ = classes.get(type(block), type(block))
    return blocks


def _uncompile(blocks):
    for block in blocks:
        block._compiled_call_impl = None


def is_compiled(model):
    """Whether :func:`prepare` compiled the model's ConvNeXt blocks."""
    return any(getattr(m, '_compiled_call_impl', None) is not None for m in model.modules())


def _device_of(model):
    return next(itertools.chain(model.parameters(), model.buffers())).device


def prepare(model, device=None, compile=False, backend='inductor'):
    """Convert ``model`` in place to its fastest faithful form on ``device`` (default: where it is), moving it
    there; returns it. Idempotent; :func:`reference` undoes it.

    compile: also ``torch.compile`` every ConvNeXt block in place (their reference forward, with ``backend``),
    and check the result on one 64x64 image; if compiling fails (e.g. no C++ compiler for a CPU build), the
    blocks stay eager and a warning says why. Compiled blocks stay compiled through later calls.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    if not hasattr(model, _STATE):
        setattr(model, _STATE, _memory_formats(model))
    cpu = device.type == 'cpu'
    model.to(device, memory_format=torch.channels_last if cpu else torch.contiguous_format)
    compiled = is_compiled(model)
    blocks = _set_block_classes(model, _CPU_CLASSES if cpu and not (compile or compiled) else _REFERENCE_CLASSES)
    if compile and not compiled:
        _compile_blocks(model, blocks, device, backend)
        if not is_compiled(model):  # it failed: the eager form of the device
            _set_block_classes(model, _CPU_CLASSES if cpu else {})
    return model


def _compile_blocks(model, blocks, device, backend):
    """``nn.Module.compile`` of every block, checked by one forward of a 64x64 image (no random draws)."""
    # The blocks share one forward code object: allow a compiled variant per block and input size.
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 4 * len(blocks))
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 16 * len(blocks))
    for block in blocks:
        block.compile(backend=backend, dynamic=None)
    try:
        with torch.inference_mode():
            model.forward_end2end(torch.full((1, 3, 64, 64), 0.5, device=device),
                                  torch.tensor([float(model.config.lmb_range[0])], device=device),
                                  noise=torch.zeros_like)
    except Exception as e:  # torch's compile errors have no common base class
        _uncompile(blocks)
        warnings.warn(f'torch.compile failed ({type(e).__name__}: {first_line(e)}); the model stays eager')


def reference(model):
    """Undo :func:`prepare` in place: reference ConvNeXt blocks (not compiled) and the memory format the model
    had before its first ``prepare`` (it stays on its device). Returns the model."""
    _uncompile(_set_block_classes(model, _REFERENCE_CLASSES))
    if hasattr(model, _STATE):
        _set_memory_formats(model, getattr(model, _STATE))
        delattr(model, _STATE)
    return model


@contextlib.contextmanager
def restoring(model):
    """Inside the block, ``model`` may be prepared, moved or switched to eval mode; on exit it is as it was:
    device, memory formats, ``training`` flag, block classes and compiled blocks."""
    device, formats, training = _device_of(model), _memory_formats(model), model.training
    classes = {m: (type(m), m._compiled_call_impl) for m in model.modules() if isinstance(m, ConvNeXtBlockAdaLN)}
    state = getattr(model, _STATE, None)
    try:
        yield model
    finally:
        model.to(device)
        _set_memory_formats(model, formats)
        model.train(training)
        for m, (cls, compiled) in classes.items():
            m.__class__, m._compiled_call_impl = cls, compiled
        if state is None:
            model.__dict__.pop(_STATE, None)
        else:
            setattr(model, _STATE, state)
