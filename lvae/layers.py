"""Building blocks of the variable-rate ResNet VAE (SPEC.md, "Building blocks").

Shapes are NCHW unless stated. Every block works with either memory format; with
``torch.channels_last`` tensors the ConvNeXt block runs with no layout copies at all.
"""
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from torch.autograd.function import once_differentiable

from lvae import kernels

# Upper end of the lambda scale used by the sinusoidal embedding (SPEC: s = ln(lmb) * P / ln 8192).
MAX_LMB = 8192.0
# ConvNeXt blocks fold AdaLN into fc1 when each image has at least this many pixels per channel (below,
# the per-image weight copies cost more than the activation pass they save).
FOLD_PIXELS_PER_CHANNEL = 2
# Without autograd (evaluation) on a CPU, channels_last float32 ConvNeXt blocks run fused kernels: the depthwise
# convolution with the LayerNorm (lvae.kernels), and fc1 + GELU and fc2 + the residual as one oneDNN call each
# (``torch.ops.mkldnn._linear_pointwise``), where this torch has them.
FUSED_INFERENCE = True


def preferred_memory_format(device):
    """The memory format the model runs fastest in on ``device`` (benchmarks/RESULTS.md): channels_last on a
    CPU (rd_model_base's training step 1.36x and evaluation forward 1.28x faster than NCHW on a 2-core Xeon),
    NCHW on CUDA (an H100 ran rd_model_base's fp32 training step 1.34x faster in NCHW than channels_last)."""
    return torch.channels_last if torch.device(device).type == 'cpu' else torch.contiguous_format


def conv_k1s1(cin, cout):
    """1x1 convolution with zero bias."""
    conv = nn.Conv2d(cin, cout, kernel_size=1)
    nn.init.zeros_(conv.bias)
    return conv


def conv_k3s1(cin, cout):
    """3x3 'same' convolution with zero bias."""
    conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
    nn.init.zeros_(conv.bias)
    return conv


def patch_downsample(cin, cout, rate):
    """Non-overlapping patch embedding: (B, cin, H, W) -> (B, cout, H/rate, W/rate)."""
    conv = nn.Conv2d(cin, cout, kernel_size=rate, stride=rate)
    nn.init.zeros_(conv.bias)
    return conv


def patch_upsample(cin, cout, rate):
    """1x1 conv + PixelShuffle: (B, cin, H, W) -> (B, cout, H*rate, W*rate)."""
    return nn.Sequential(conv_k1s1(cin, cout * rate * rate), nn.PixelShuffle(rate))


def sinusoidal_embedding(values, dim, max_period):
    """(B,) scalars -> (B, dim) features ``[cos(v * f), sin(v * f)]``, ``f = max_period ** -linspace(0, 1, dim/2)``."""
    if values.dim() != 1 or dim % 2 != 0:
        raise ValueError(f'expected 1-D values and an even dim, got shape {tuple(values.shape)} and dim={dim}')
    exponents = torch.linspace(0, 1, steps=dim // 2, device=values.device)
    freqs = torch.pow(max_period, -exponents)
    args = values.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def lmb_sinusoid(lmb, dim, sin_period):
    """Sinusoid of log-lambda: (B,) lambdas -> (B, dim), with ``s = ln(lmb) * sin_period / ln(8192)``."""
    scaled = torch.log(lmb) * (sin_period / math.log(MAX_LMB))
    return sinusoidal_embedding(scaled, dim, sin_period)


def smooth_mean(x):
    """The paper's mean-smoothing function, element-wise.

    ``sign(x) * |x| ** (1 - 0.5 * tanh|x|)`` for |x| <= 6, ``sign(x) * sqrt(|x| + 1e-8)`` above, and
    exactly ``x`` where ``x == 0`` (the gradient there is finite: the power is evaluated at a safe point).
    """
    t = x.abs()
    nonzero = t > 0
    t_safe = torch.where(nonzero, t, torch.ones_like(t))
    small = torch.pow(t_safe, 1.0 - 0.5 * torch.tanh(t_safe))
    large = torch.sqrt(t + 1e-8)
    y = torch.sign(x) * torch.where(t > 6.0, large, small)
    return torch.where(nonzero, y, x)


def std_transform(v):
    """Unconstrained head output -> standard deviation: ``softplus(v, beta=ln 2, threshold=12)``."""
    return F.softplus(v, beta=math.log(2), threshold=12)


def gaussian_kl(qm, qv, pm, pv):
    """Element-wise KL( N(qm, qv^2) || N(pm, pv^2) ) in nats (qv, pv are standard deviations)."""
    return -0.5 + pv.log() - qv.log() + 0.5 * (qv.square() + (qm - pm).square()) / pv.square()


@functools.cache
def _onednn_linear_works():
    """Whether this torch has oneDNN's fused linears (a private op of torch's, used by its compiler): checked
    once, on a tiny input against the plain ops; without them the blocks keep the plain path."""
    try:
        # fixed values: drawing them would move the global RNG, and with it the posterior draws of the caller
        x, w = torch.linspace(-2, 2, 24).view(3, 8), torch.linspace(1, -1, 32).view(4, 8)
        b = torch.linspace(-1, 1, 4)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, 'gelu', [None], 'none')
        z = torch.ops.mkldnn._linear_pointwise.binary(x, y, w, b, 'add')
        return bool(torch.allclose(y, F.gelu(F.linear(x, w, b)), atol=1e-5)
                    and torch.allclose(z, F.linear(x, w, b) + y, atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _cpu_kernel_input(x, weight):
    """Whether ``x`` and ``weight`` suit the blocks' CPU kernels: float32 on a CPU, ``x`` channels_last, outside
    autocast and torch.compile."""
    return (x.device.type == 'cpu' and x.dtype == weight.dtype == torch.float32
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.is_autocast_enabled('cpu')
            and not torch.compiler.is_compiling())


def _fused_inference(x, weight):
    """Whether a ConvNeXt block runs its fused inference kernels on ``x``: :data:`FUSED_INFERENCE`, without
    autograd, on a :func:`_cpu_kernel_input`."""
    return FUSED_INFERENCE and not torch.is_grad_enabled() and _cpu_kernel_input(x, weight)


def _onednn_inference(x, weight):
    """Whether a ConvNeXt block's linears on ``x`` go through oneDNN's fused kernels: :func:`_fused_inference`,
    with ``torch.backends.mkldnn`` enabled."""
    return _fused_inference(x, weight) and torch.backends.mkldnn.enabled and _onednn_linear_works()


class _DepthwiseConvCPU(torch.autograd.Function):
    """A 'same'-padded depthwise convolution whose weight gradient comes from :mod:`lvae.kernels` (CPU,
    float32, channels_last); the forward and the input gradient are oneDNN's forward convolutions."""

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


class ConvNeXtBlockAdaLN(nn.Module):
    """Residual ConvNeXt block with lambda conditioning through adaptive LayerNorm.

    ``y = x + gamma * MLP(AdaLN(LN(dwconv7x7(x)), emb))``; (B, C, H, W), emb (B, E) -> (B, C, H, W).
    State-dict keys: ``gamma``, ``conv_dw``, ``embedding_layer.1``, ``mlp.fc1``, ``mlp.fc2``.
    """

    def __init__(self, dim, embed_dim, kernel_size=7, mlp_ratio=2):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), 1e-6))
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.embedding_layer = nn.Sequential(nn.GELU(), nn.Linear(embed_dim, 2 * dim))
        self.mlp = Mlp(dim, hidden_features=int(mlp_ratio * dim), act_layer=nn.GELU)
        self.dim = dim

    def hidden(self, x, emb):
        """The MLP's activations, channels-last: (B, C, H, W) -> (B, H, W, 2C) (timm's Mlp up to fc2; its
        dropout and norm are identities here)."""
        conv = self.conv_dw
        if (_fused_inference(x, conv.weight) and conv.kernel_size == (7, 7) and self.dim % 16 == 0
                and kernels.available()):
            h = kernels.depthwise_conv_layer_norm(x, conv.weight, conv.bias, 1e-6)
        else:
            h = self._conv_dw(x).permute(0, 2, 3, 1)  # a view: no copy when x is channels_last
            h = F.layer_norm(h, (self.dim,), eps=1e-6)
        shift, scale = self.embedding_layer(emb).chunk(2, dim=1)  # (B, C) each
        fold = h.shape[1] * h.shape[2] >= FOLD_PIXELS_PER_CHANNEL * self.dim
        if _onednn_inference(x, self.mlp.fc1.weight):
            return self._fc1_gelu_onednn(h, shift, scale, fold)
        if fold:
            h = self._fc1_folded(h, shift, scale)
        else:
            h = self.mlp.fc1(torch.addcmul(shift[:, None, None], h, 1 + scale[:, None, None]))
        return self.mlp.act(h)

    def _conv_dw(self, x):
        """``conv_dw(x)``; when training on a CPU in float32 channels_last, with lvae.kernels' weight gradient."""
        conv = self.conv_dw
        if (torch.is_grad_enabled() and conv.weight.requires_grad and _cpu_kernel_input(x, conv.weight)
                and kernels.available()):
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

    def _fc1_gelu_onednn(self, h, shift, scale, fold):
        """``GELU(fc1(h * (1 + scale) + shift))`` as one oneDNN call (no autograd): (B, H, W, C) -> (B, H, W, 2C).
        For one image with ``fold``, the affine goes into fc1's weights; otherwise it is a pass over ``h`` (several
        images would need a call each and a copy of the wider output to join them)."""
        fc1 = self.mlp.fc1
        if fold and h.shape[0] == 1:
            weight, bias = fc1.weight * (1 + scale), torch.addmm(fc1.bias, shift, fc1.weight.t())[0]
        else:
            h = torch.addcmul(shift[:, None, None], h, 1 + scale[:, None, None])
            weight, bias = fc1.weight, fc1.bias
        return torch.ops.mkldnn._linear_pointwise(h, weight, bias, 'gelu', [None], 'none')

    def forward(self, x, emb):
        a = self.hidden(x, emb)
        fc2 = self.mlp.fc2
        if not x.is_contiguous(memory_format=torch.channels_last) or not a.dtype == x.dtype == fc2.weight.dtype:
            return torch.addcmul(x, fc2(a).permute(0, 3, 1, 2), self.gamma)  # NCHW, or under autocast
        # channels_last in one dtype: gamma folded into fc2 (gamma * (W a + b) = (gamma W) a + gamma b). No pass
        # for gamma, forward or backward; gamma's gradient comes through the folded weight.
        gamma = self.gamma.view(-1)
        residual = x.permute(0, 2, 3, 1)  # (B, H, W, C): a contiguous view
        if _onednn_inference(x, fc2.weight):  # x + (gamma W) a + gamma b in one oneDNN call
            out = torch.ops.mkldnn._linear_pointwise.binary(a, residual, fc2.weight * gamma[:, None],
                                                            gamma * fc2.bias, 'add')
            return out.permute(0, 3, 1, 2)
        # fc2's GEMM accumulated in place onto x + gamma b, made as a (B*H*W, C) tensor of its own, not a view: an
        # in-place op on a view would cost autograd a clone and a copy of its gradient (CopySlices).
        out = torch.add(residual.reshape(-1, self.dim), gamma * fc2.bias)
        out.addmm_(a.reshape(-1, a.shape[-1]), (fc2.weight * gamma[:, None]).t())
        return out.view(x.shape[0], x.shape[2], x.shape[3], self.dim).permute(0, 3, 1, 2)


class ConvNeXtAdaLNPatchDown(ConvNeXtBlockAdaLN):
    """A ConvNeXt-AdaLN block at width ``cin`` followed by a 2x patch down-sampling to ``cout``."""

    def __init__(self, cin, cout, embed_dim, kernel_size=7, mlp_ratio=2, rate=2):
        super().__init__(cin, embed_dim, kernel_size=kernel_size, mlp_ratio=mlp_ratio)
        self.downsapmle = patch_downsample(cin, cout, rate)  # (sic) the published checkpoint's spelling

    def forward(self, x, emb):
        return self.downsapmle(super().forward(x, emb))
