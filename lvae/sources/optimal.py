"""The optimal channel of a Gaussian field: reverse water-filling as a model with the VAE's interface, so that it is
evaluated like any model and must land on the true R(D). It calibrates everything downstream of a model: rate units
and pixel counts, padding and cropping, the MSE scale, the PSNR conventions, BD-rate against the truth.

In the field's eigenbasis (its colour axes times the orthonormal 2-D discrete Hartley transform, a real basis that
diagonalises every stationary covariance on the torus) the image is independent components ``c_i ~ N(0, lambda_i)``
(:meth:`~lvae.sources.gaussian.GaussianField.eigenvalues`, [0, 1] pixel scale). At water level ``theta`` a component
with ``lambda_i > theta`` is coded through the backward test channel of reverse water-filling
(Cover & Thomas, Theorem 10.3.3):

    prior      p(z_i)     = N(0, lambda_i - theta)             (the reconstruction's marginal)
    posterior  q(z_i | x) = N(a_i c_i, a_i theta),   a_i = 1 - theta / lambda_i

and the reconstruction is the mean colour plus the inverse transform of ``z`` (the other components at 0). Over the
source, ``E KL(q || p) = 1/2 ln(lambda_i / theta)`` nats and ``E (c_i - z_i)^2 = theta`` per coded component, so the
channel's rate and distortion are R(D) and D exactly (per dimension ``D = mean_i min(theta, lambda_i)``).

The water level of each lambda minimises the paper's loss, rate in nats per dimension plus lambda times the MSE in
the [-1, 1] scale (four times the [0, 1] MSE): per dimension ``(1/n) sum_i [max(0, 1/2 ln(lambda_i / theta)) +
4 lambda min(theta, lambda_i)]``, whose derivative in theta is ``(k / n) (4 lambda - 1 / (2 theta))`` with k the
components coded: it falls until ``theta = 1 / (8 lambda)`` and rises after, so ``theta(lambda) = 1 / (8 lambda)``
(docs/sources.md).
"""
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lvae.layers import gaussian_kl
from lvae.models import VariableRateLossyVAE, register_model
from lvae.models.rd.model import standard_normal


def hartley2(x):
    """The orthonormal 2-D discrete Hartley transform over the last two dimensions (its own inverse)."""
    f = torch.fft.fft2(x, norm='ortho')
    return f.real - f.imag


def level_for_lambda(lmb):
    """The water level theta ([0, 1] scale) that minimises rate (nats per dimension) + ``lmb`` * MSE in the [-1, 1]
    scale: ``1 / (8 lmb)``."""
    return 1.0 / (8.0 * lmb)


@dataclass
class OptimalConfig:
    """What defines an optimal channel: its source and the lambda range of its default grid (the VAE's)."""
    source: str
    size: int
    lmb_range: list = field(default_factory=lambda: [4.0, 2048.0])
    channel: str = 'reverse water-filling, theta = 1 / (8 lambda)'

    def to_dict(self):
        return asdict(self)


class OptimalChannel(nn.Module):
    """The R(D)-achieving channel of ``source`` (a :class:`~lvae.sources.gaussian.GaussianField`) with the interface
    of :class:`~lvae.models.VariableRateLossyVAE` that evaluation uses: ``forward_end2end(im, lmb, noise=...)`` ->
    ``(x_hat, [{'kl': (B, 3, S, S) nats}])``, ``kl_per_image``, ``process_output``, ``config.lmb_range``.

    ``im`` (B, 3, H, W) in [0, 1], H, W >= S: its top-left S x S (the field; evaluation pads on the right and the
    bottom by replicating the edge, which a decoder can redo from the field alone) is coded, and ``x_hat`` (B, 3, H,
    W) in [-1, 1] is the reconstruction padded again by edge replication. No learnt parameters: the field's
    spectrum, colour axes and mean are buffers (float64)."""

    process_output = staticmethod(VariableRateLossyVAE.process_output)
    preprocess_target = staticmethod(VariableRateLossyVAE.preprocess_target)
    kl_per_image = staticmethod(VariableRateLossyVAE.kl_per_image)

    def __init__(self, source, lmb_range=(4.0, 2048.0)):
        super().__init__()
        self.config = OptimalConfig(source.name, source.size, [float(v) for v in lmb_range])
        self.register_buffer('spectra', torch.from_numpy(source.spectra()))                       # (3, S, S)
        self.register_buffer('basis', torch.tensor(source.basis, dtype=torch.float64))           # (3, 3)
        self.register_buffer('mean', torch.tensor(source.mean, dtype=torch.float64)[:, None, None])

    def forward_end2end(self, im, lmb, get_latents=False, noise=None):
        size = self.config.size
        h, w = im.shape[2:]
        if im.dim() != 4 or im.shape[1] != 3 or h < size or w < size:
            raise ValueError(f'expected images (B, 3, H, W) with H, W >= {size} (the field of '
                             f'{self.config.source}), got {list(im.shape)}')
        lmb = torch.as_tensor(lmb, dtype=torch.float64, device=im.device).expand(im.shape[0])
        theta = level_for_lambda(lmb)[:, None, None, None]
        x = im[:, :, :size, :size].double() - self.mean
        c = hartley2(torch.einsum('ck,bchw->bkhw', self.basis, x))                  # (B, 3, S, S) eigen-coefficients
        lam = self.spectra.expand_as(c)
        coded = lam > theta
        a = torch.where(coded, 1 - theta / lam, 0.0)
        one = torch.ones_like(c)  # an uncoded component: q = p = N(0, 1), KL exactly 0, z unused
        qm, qv = a * c, torch.where(coded, (a * theta).sqrt(), one)
        pv = torch.where(coded, (lam - theta).clamp_min(0).sqrt(), one)
        kl = gaussian_kl(qm, qv, torch.zeros_like(c), pv)
        z = torch.where(coded, qm + qv * (noise or standard_normal)(c), 0.0)
        rec = torch.einsum('ck,bkhw->bchw', self.basis, hartley2(z)) + self.mean
        x_hat = F.pad(rec * 2 - 1, (0, w - size, 0, h - size), mode='replicate') if (h, w) != (size, size) \
            else rec * 2 - 1
        stats = {'kl': kl, 'z': z} if get_latents else {'kl': kl}
        return x_hat.float(), [stats]


def register_optimal_channel(source):
    """Register the model ``<source name>-optimal``: ``lvae.get_model('gaussian-64-optimal')``, ``eval-var-rate.py
    --model gaussian-64-optimal`` (no weights: it is the source's own channel)."""
    def factory(pretrained=False, **overrides):
        if pretrained:
            raise ValueError(f'{factory.__name__} has no weights to load: it is computed from its source')
        return OptimalChannel(source, **overrides)
    factory.__name__ = factory.__qualname__ = f'{source.name}-optimal'
    factory.__doc__ = f'The optimal (reverse water-filling) channel of the source {source.name}.'
    register_model(factory, weightless=True)
