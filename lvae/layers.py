"""Building blocks of the variable-rate ResNet VAE (docs/contract.md, "The blocks"): the paper's math, one path.

Shapes are NCHW unless stated; every block works in either memory format. Faster forms of the same
computation (for a CPU or a GPU) live in :mod:`lvae.accel`, applied to a model explicitly.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

# Upper end of the lambda scale used by the sinusoidal embedding (docs/contract.md: s = ln(lmb) * P / ln 8192).
MAX_LMB = 8192.0


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


class ConvNeXtBlockAdaLN(nn.Module):
    """Residual ConvNeXt block with lambda conditioning through adaptive LayerNorm (AdaLN).

    ``y = x + gamma * fc2(GELU(fc1(LN(dwconv7x7(x)) * (1 + scale) + shift)))`` with ``(shift, scale)`` =
    ``chunk(Linear(GELU(emb)))`` and LN over channels (eps 1e-6, no affine); x (B, C, H, W), emb (B, E)
    -> (B, C, H, W). State-dict keys: ``gamma``, ``conv_dw``, ``embedding_layer.1``, ``mlp.fc1``, ``mlp.fc2``.
    """

    def __init__(self, dim, embed_dim, kernel_size=7, mlp_ratio=2):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), 1e-6))
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.embedding_layer = nn.Sequential(nn.GELU(), nn.Linear(embed_dim, 2 * dim))
        self.mlp = Mlp(dim, hidden_features=int(mlp_ratio * dim), act_layer=nn.GELU)  # fc1, GELU, fc2
        self.dim = dim

    def forward(self, x, emb):
        shift, scale = self.embedding_layer(emb)[:, None, None, :].chunk(2, dim=-1)  # (B, 1, 1, C) each
        h = F.layer_norm(self.conv_dw(x).permute(0, 2, 3, 1), (self.dim,), eps=1e-6)  # (B, H, W, C)
        h = self.mlp(h * (1 + scale) + shift)
        return x + self.gamma * h.permute(0, 3, 1, 2)


class ConvNeXtAdaLNPatchDown(ConvNeXtBlockAdaLN):
    """A ConvNeXt-AdaLN block at width ``cin`` followed by a 2x patch down-sampling to ``cout``."""

    def __init__(self, cin, cout, embed_dim, kernel_size=7, mlp_ratio=2, rate=2):
        super().__init__(cin, embed_dim, kernel_size=kernel_size, mlp_ratio=mlp_ratio)
        self.downsapmle = patch_downsample(cin, cout, rate)  # (sic) the published checkpoint's spelling

    def forward(self, x, emb):
        return self.downsapmle(super().forward(x, emb))
