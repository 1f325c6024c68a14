"""The ConvNeXt blocks arranged for a CPU (:class:`CPUConvNeXtBlock`): the same math and parameters as
:class:`~lvae.layers.ConvNeXtBlockAdaLN`, the training step with folds and the C++ depthwise weight gradient, and
at inference the faster of two forms, chosen by timing (:class:`FasterForm`, :data:`inference_forms`).
:func:`lvae.accel.prepare` sets them; see :mod:`lvae.accel`.
"""
import functools
import math
import time

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lvae.accel import kernels
from lvae.layers import ConvNeXtAdaLNPatchDown, ConvNeXtBlockAdaLN

# The ConvNeXt blocks fold AdaLN into fc1 when each image has at least this many pixels per channel (below,
# the per-image weight copies cost more than the activation pass they save).
FOLD_PIXELS_PER_CHANNEL = 2


class _DepthwiseConvCPU(torch.autograd.Function):
    """A 'same'-padded depthwise convolution whose weight gradient comes from :mod:`lvae.accel.kernels` (CPU, float32,
    channels_last); the forward and the input gradient are oneDNN's forward convolutions."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        k = weight.shape[-1]
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # the same convolution with the kernel flipped: oneDNN's forward, 1.3x
            # faster than its backward-data (C=256 at 4x64x64: 2.7 ms against 3.5)
            grad_x = F.conv2d(grad, weight.flip(-2, -1), padding=k // 2, groups=x.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = kernels.depthwise_weight_grad(x, grad, k)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b


class FasterForm:
    """Runs whichever of several forms of one computation was faster on its key (e.g. an input shape), timed at
    the first call with that key in the process: one untimed call of each form (oneDNN builds its kernels
    then), then ``rounds`` calls of each in turns, the best time of each. Later calls with the key run the
    chosen form only. ``chosen`` maps each key measured so far to its form's name."""

    def __init__(self, rounds=2, timer=time.perf_counter):
        self.rounds, self.timer, self.chosen = rounds, timer, {}

    def __call__(self, key, forms):
        """``forms``: {name: function of no arguments}, all computing the same result; returns that result.
        On a tie the first form wins."""
        if key in self.chosen:
            return forms[self.chosen[key]]()
        outputs = {name: form() for name, form in forms.items()}
        best = dict.fromkeys(forms, math.inf)
        for _ in range(self.rounds):
            for name, form in forms.items():
                start = self.timer()
                outputs[name] = form()
                best[name] = min(best[name], self.timer() - start)
        self.chosen[key] = min(best, key=best.get)
        return outputs[self.chosen[key]]


# The inference form of each CPUConvNeXtBlock input shape, for this process: ``reference`` (fc1 and fc2 as
# matmuls, which call MKL's sgemm in torch's x86 builds) or ``onednn`` (CPUConvNeXtBlock._forward_onednn).
# Which is faster depends on the CPU and the shape (benchmarks/RESULTS.md); both agree to float rounding.
inference_forms = FasterForm()


class CPUConvNeXtBlock(ConvNeXtBlockAdaLN):
    """:class:`~lvae.layers.ConvNeXtBlockAdaLN` arranged for a CPU in float32 channels_last: the training step
    with folds and the C++ weight gradient, and without autograd the faster of the reference forward and
    :meth:`_forward_onednn` (:data:`inference_forms`). Other inputs (e.g. under autocast) take the reference
    forward. Set by :func:`prepare`; same parameters and state dict."""

    def forward(self, x, emb):
        if x.device.type != 'cpu' or x.dtype != torch.float32 or torch.is_autocast_enabled('cpu'):
            return super().forward(x, emb)
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op inside a prepared model
        if not torch.is_grad_enabled():
            key = (tuple(x.shape), self.mlp.fc1.out_features, torch.get_num_threads())
            return inference_forms(key, {'reference': functools.partial(self._forward_reference, x, emb),
                                         'onednn': functools.partial(self._forward_onednn, x, emb)})
        shift, scale = self.embedding_layer(emb).chunk(2, dim=1)  # (B, C) each
        h = F.layer_norm(self._conv_dw(x).permute(0, 2, 3, 1), (self.dim,), eps=1e-6)  # (B, H, W, C): a view
        if h.shape[1] * h.shape[2] >= FOLD_PIXELS_PER_CHANNEL * self.dim:
            h = self._fc1_folded(h, shift, scale)
        else:
            h = self.mlp.fc1(torch.addcmul(shift[:, None, None], h, 1 + scale[:, None, None]))
        return self._fc2_residual(x, self.mlp.act(h))

    def _forward_reference(self, x, emb):
        """The reference block's forward (here on channels_last activations)."""
        return ConvNeXtBlockAdaLN.forward(self, x, emb)

    def _forward_onednn(self, x, emb):
        """The reference forward with fc1 and fc2 as 1x1 convolutions (oneDNN's kernels), ``gamma`` folded into
        fc2 and the residual added in place; element-wise passes run on the (B, H, W, C) view of the
        channels_last activations, which torch treats as contiguous (GELU ran 1.5x slower on the same memory
        seen as a channels_last tensor). x (B, C, H, W) channels_last -> (B, C, H, W) channels_last."""
        fc1 = self.mlp.fc1
        shift, scale = self.embedding_layer(emb).chunk(2, dim=1)  # (B, C) each
        h = F.layer_norm(self.conv_dw(x).permute(0, 2, 3, 1), (self.dim,), eps=1e-6)  # (B, H, W, C)
        h = torch.addcmul(shift[:, None, None], h, 1 + scale[:, None, None])
        a = self.mlp.act(F.conv2d(h.permute(0, 3, 1, 2), fc1.weight[:, :, None, None], fc1.bias).permute(0, 2, 3, 1))
        weight, bias = self._fc2_with_gamma()
        out = F.conv2d(a.permute(0, 3, 1, 2), weight[:, :, None, None], bias)
        return out.permute(0, 2, 3, 1).add_(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def _conv_dw(self, x):
        """``conv_dw(x)`` in a training step, with :mod:`lvae.accel.kernels`' weight gradient when it takes one."""
        conv = self.conv_dw
        if conv.weight.requires_grad and kernels.available():
            return _DepthwiseConvCPU.apply(x, conv.weight, conv.bias)
        return conv(x)

    def _fc1_folded(self, h, shift, scale):
        """``fc1(h * (1 + scale) + shift)`` with the per-image affine folded into fc1's weights, which saves
        the AdaLN pass over the activations (and its backward): (B, H, W, C) -> (B, H, W, 2C)."""
        fc1 = self.mlp.fc1
        # (B, C, 2C), contiguous: bmm's operand as it is, so that its gradient also arrives contiguous (a
        # transposed one made the weight gradient's reduction over B 28x slower).
        weight_t = fc1.weight.t() * (1 + scale[:, :, None])
        bias = torch.addmm(fc1.bias, shift, fc1.weight.t())  # (B, 2C)
        nb, nh, nw, c = h.shape
        out = torch.baddbmm(bias[:, None, :], h.reshape(nb, nh * nw, c), weight_t)
        return out.view(nb, nh, nw, -1)

    def _fc2_with_gamma(self):
        """fc2's weight (C, 2C) and bias (C,) with ``gamma`` folded in: gamma * (W a + b) = (gamma W) a + gamma b."""
        gamma = self.gamma.view(-1)
        return self.mlp.fc2.weight * gamma[:, None], self.mlp.fc2.bias * gamma

    def _fc2_residual(self, x, a):
        """``x + gamma * fc2(a)`` as ``x + gamma b + a (gamma W)^T``: gamma folded into fc2 (no pass for it,
        forward or backward) and fc2's GEMM accumulated in place. x (B, C, H, W) channels_last, a (B, H, W, 2C)
        -> (B, C, H, W) channels_last."""
        weight, bias = self._fc2_with_gamma()
        # x + gamma b as a (B*H*W, C) tensor of its own, not a view: an in-place op on a view would cost
        # autograd a clone and a copy of its gradient (CopySlices).
        out = torch.add(x.permute(0, 2, 3, 1).reshape(-1, self.dim), bias)
        out.addmm_(a.reshape(-1, a.shape[-1]), weight.t())
        return out.view(x.shape[0], x.shape[2], x.shape[3], self.dim).permute(0, 3, 1, 2)


class CPUConvNeXtAdaLNPatchDown(ConvNeXtAdaLNPatchDown, CPUConvNeXtBlock):
    """:class:`~lvae.layers.ConvNeXtAdaLNPatchDown` whose block is a :class:`CPUConvNeXtBlock` (its forward's
    ``super()`` call reaches CPUConvNeXtBlock.forward: method resolution order)."""
