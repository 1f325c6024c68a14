"""Faster forms of a model's computation, applied to one model explicitly.

The models in :mod:`lvae.layers` and :mod:`lvae.models` are the paper's math, one path (the reference).
``prepare(model, device)`` converts a model in place to the fastest faithful form that the benchmarks
(benchmarks/RESULTS.md) found for that device, and :func:`reference` converts it back:

- CPU: parameters and activations in ``torch.channels_last``, and every ConvNeXt block's ``__class__`` set to a
  subclass (:class:`CPUConvNeXtBlock`) whose training forward arranges the same math for a CPU: the AdaLN
  affine folded into fc1 and ``gamma`` into fc2 (computed at forward time: the weights are never written), the
  residual added in place, and the depthwise convolution's weight gradient from :mod:`lvae.accel.kernels`. Without
  autograd it runs the reference forward or the same with fc1 and fc2 as oneDNN's 1x1 convolutions, whichever
  ran faster at the first call of each input shape (:data:`inference_forms`).
- CUDA (and other devices): NCHW and the reference blocks (an H100 ran rd_model_base's fp32 training step 1.34x
  faster in NCHW than in channels_last).
- ``compile=True``: every ConvNeXt block (the reference forward) compiled in place with ``torch.compile``.

State-dict keys and values are unchanged in every form; results agree with the reference to float rounding.
"""
from lvae.accel import kernels
from lvae.accel.blocks import CPUConvNeXtAdaLNPatchDown, CPUConvNeXtBlock, FasterForm, inference_forms
from lvae.accel.forms import is_compiled, prepare, reference, restoring

__all__ = ['CPUConvNeXtAdaLNPatchDown', 'CPUConvNeXtBlock', 'FasterForm', 'inference_forms', 'is_compiled', 'kernels',
           'prepare', 'reference', 'restoring']
