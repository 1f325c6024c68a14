"""The variable-rate hierarchical VAE whose rate and distortion give the R(D) upper bound.

Pixel scales: images ``im`` are in [0, 1]; the decoder works in [-1, 1] (``x_hat``).
Rates are KL divergences in nats unless a name says bits.
"""
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lvae.layers import (ConvNeXtAdaLNPatchDown, ConvNeXtBlockAdaLN, conv_k1s1, conv_k3s1, gaussian_kl,
                         lmb_sinusoid, patch_downsample, patch_upsample, smooth_mean, std_transform)

MAX_STRIDE = 64  # the encoder down-samples by 64: image sides must be multiples of it


def standard_normal(like):
    """N(0, 1) draws shaped like ``like``, filled in logical (NCHW) order whatever its memory format, so
    that channels_last models draw the same numbers as contiguous ones (``randn_like`` would not)."""
    return torch.randn(like.shape, dtype=like.dtype, device=like.device)


@dataclass
class RDConfig:
    """Architecture of a :class:`VariableRateLossyVAE` (docs/contract.md, "The config")."""
    enc_dims: list = field(default_factory=lambda: [256, 512, 640, 768, 768])  # stage 0 at 1/4 ... 4 at 1/64
    enc_nums: list = field(default_factory=lambda: [6, 6, 6, 4, 4])
    dec_dims: list = field(default_factory=lambda: [768, 768, 640, 512, 256])  # stage 0 at 1/64 ... 4 at 1/4
    dec_nums: list = field(default_factory=lambda: [1, 2, 3, 4, 5])
    z_dims: list = field(default_factory=lambda: [32, 32, 32, 32, 32])
    lmb_embed_dim: list = field(default_factory=lambda: [256, 256])  # (sinusoid size, embedding size)
    sin_period: float = 64
    lmb_range: list = field(default_factory=lambda: [4.0, 2048.0])
    smooth_mean: bool = True
    im_shift: float = -0.4546259594901961
    im_scale: float = 3.67572653978347

    def __post_init__(self):
        for name in ('enc_dims', 'enc_nums', 'dec_dims', 'dec_nums', 'z_dims'):
            value = list(getattr(self, name))
            if len(value) != 5 or not all(isinstance(v, int) and v > 0 for v in value):
                raise ValueError(f'config {name} must be five positive integers (one per stage), got {value!r}')
            setattr(self, name, value)
        self.lmb_embed_dim = [int(v) for v in self.lmb_embed_dim]
        if len(self.lmb_embed_dim) != 2 or self.lmb_embed_dim[0] % 2:
            raise ValueError(f'config lmb_embed_dim must be (even sinusoid size, embedding size), '
                             f'got {self.lmb_embed_dim!r}')
        low, high = (float(v) for v in self.lmb_range)
        if not 0 < low < high:
            raise ValueError(f'config lmb_range must be 0 < low < high, got {self.lmb_range!r}')
        self.lmb_range = [low, high]

    @classmethod
    def from_dict(cls, cfg):
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f'unknown config field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}')
        return cls(**cfg)

    def to_dict(self):
        return asdict(self)


class LatentVariableBlock(nn.Module):
    """One Gaussian latent of the top-down decoder (docs/contract.md, "The model").

    Decoder feature (B, C, h, w) and encoder feature (B, Ce, h, w) -> new decoder feature and a stats dict
    holding ``kl`` (B, Z, h, w) in nats (in 'posterior' mode) and ``z`` when asked.
    """

    def __init__(self, width, zdim, enc_width, embed_dim, smooth, kernel_size=7, mlp_ratio=2):
        super().__init__()

        def block(dim):
            return ConvNeXtBlockAdaLN(dim, embed_dim, kernel_size=kernel_size, mlp_ratio=mlp_ratio)

        self.resnet_front = block(width)
        self.resnet_end = block(width)
        self.posterior0 = block(enc_width)
        self.posterior1 = block(width)
        self.posterior2 = block(width)
        self.post_merge = conv_k1s1(width + enc_width, width)
        self.posterior = conv_k3s1(width, zdim * 2)
        self.prior = conv_k1s1(width, zdim * 2)
        self.z_proj = conv_k1s1(zdim, width)
        self.smooth = smooth

    def _mean_std(self, params):
        m, v = params.float().chunk(2, dim=1)  # statistics in fp32 also under bf16 autocast
        return (smooth_mean(m) if self.smooth else m), std_transform(v)

    def forward(self, feature, emb, enc_feature=None, latent=None, t=1.0, get_latent=False, noise=None):
        """Posterior mode when ``enc_feature`` is given; else sample from the prior at temperature ``t``
        (or use ``latent``). ``noise(like)`` returns the standard normal draws (default :func:`standard_normal`)."""
        noise = noise or standard_normal
        feature = self.resnet_front(feature, emb)
        pm, pv = self._mean_std(self.prior(feature))
        stats = {}
        if enc_feature is not None:
            a = self.posterior0(enc_feature, emb)
            b = self.posterior1(feature, emb)
            m = self.posterior2(self.post_merge(torch.cat([b, a], dim=1)), emb)
            qm, qv = self._mean_std(self.posterior(m))
            z = qm + qv * noise(qm)
            stats['kl'] = gaussian_kl(qm, qv, pm, pv)
        elif latent is None:
            z = pm + pv * noise(pm) * t
        else:
            z = latent
        if get_latent:
            stats['z'] = z
        feature = self.resnet_end(feature + self.z_proj(z), emb)
        return feature, stats


class Encoder(nn.Module):
    """Bottom-up encoder: (B, 3, H, W) -> {height: last feature at that height}, heights H/4 ... H/64."""

    def __init__(self, cfg: RDConfig, embed_dim):
        super().__init__()
        dims, nums = cfg.enc_dims, cfg.enc_nums
        blocks = [patch_downsample(3, dims[0], rate=4)]
        for i in range(5):
            blocks.extend(ConvNeXtBlockAdaLN(dims[i], embed_dim) for _ in range(nums[i]))
            if i < 4:
                blocks.append(ConvNeXtAdaLNPatchDown(dims[i], dims[i + 1], embed_dim))
        self.enc_blocks = nn.ModuleList(blocks)

    def forward(self, x, emb):
        features = {}
        x = self.enc_blocks[0](x)
        for block in self.enc_blocks[1:]:
            features[x.shape[2]] = x
            x = block(x, emb)
        features[x.shape[2]] = x
        return features


class VariableRateLossyVAE(nn.Module):
    """Variable-rate ResNet VAE of Duan et al. (ICIP 2023); its (KL rate, MSE) pairs bound R(D) from above.

    ``model(im, lmb)`` with ``im`` (B, 3, H, W) in [0, 1] (H, W multiples of 64) and ``lmb`` (B,) > 0 returns
    ``{'loss', 'bppix', 'psnr'}`` (0-dim tensors; bppix and psnr detached); ``lmb=None`` draws lambda
    log-uniformly over ``lmb_range`` (training). ``model(im, lmb, kl_weight=b)`` weighs the rate by ``b`` in the
    loss, a number or one per latent, top-down (a training option, :attr:`lvae.training.Recipe.kl_warmup`), or
    is ``b(kl_maps)`` of the latents' KL maps (a function returning (B,) nats,
    :class:`lvae.training.recipe.LatentRates`); the bound's objective is ``b = 1``, and ``bppix`` is always the
    whole rate.
    """

    def __init__(self, cfg: RDConfig):
        super().__init__()
        self.config = cfg
        sin_dim, embed_dim = cfg.lmb_embed_dim
        self.bias = nn.Parameter(torch.zeros(1, cfg.dec_dims[0], 1, 1))
        self.encoder = Encoder(cfg, embed_dim)
        dec_blocks = []
        for j in range(5):
            enc_width = cfg.enc_dims[4 - j]
            dec_blocks.extend(LatentVariableBlock(cfg.dec_dims[j], cfg.z_dims[j], enc_width, embed_dim,
                                                  cfg.smooth_mean) for _ in range(cfg.dec_nums[j]))
            if j < 4:
                dec_blocks.append(patch_upsample(cfg.dec_dims[j], cfg.dec_dims[j + 1], rate=2))
            else:
                dec_blocks.append(patch_upsample(cfg.dec_dims[j], 3, rate=4))
        self.dec_blocks = nn.ModuleList(dec_blocks)
        self.lmb_embedding = nn.Sequential(nn.Linear(sin_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
        self.num_latents = sum(cfg.dec_nums)

    @classmethod
    def from_config(cls, cfg):
        """Build from a plain dict in the config schema (docs/contract.md) (or an :class:`RDConfig`)."""
        return cls(cfg if isinstance(cfg, RDConfig) else RDConfig.from_dict(dict(cfg)))

    # ---------------------------------------------------------------- lambda
    def sample_lmb(self, n):
        """``n`` training lambdas drawn log-uniformly over ``lmb_range``: (n,) on the model's device."""
        low, high = (math.log(v) for v in self.config.lmb_range)
        return torch.empty(n, device=self.bias.device).uniform_(low, high).exp()

    def default_lambdas(self, steps=16):
        """``steps`` lambdas log-spaced over ``lmb_range`` (the paper's evaluation grid)."""
        low, high = (math.log(v) for v in self.config.lmb_range)
        return torch.linspace(low, high, steps).exp().tolist()

    def _check_lmb(self, lmb, batch):
        lmb = torch.as_tensor(lmb, dtype=torch.float32, device=self.bias.device)
        if lmb.dim() == 0:
            lmb = lmb.expand(batch)
        if lmb.shape != (batch,):
            raise ValueError(f'lmb must be a number or a tensor of shape [{batch}] (one per image), '
                             f'got shape {list(lmb.shape)}')
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(lmb).all() and (lmb > 0).all()):
            raise ValueError(f'lmb must be finite and > 0, got {lmb.tolist()}')
        return lmb

    def lmb_embed(self, lmb):
        """(B,) lambdas -> (B, E) conditioning embedding."""
        return self.lmb_embedding(lmb_sinusoid(lmb, self.config.lmb_embed_dim[0], self.config.sin_period))

    # ---------------------------------------------------------------- pixels
    @staticmethod
    def check_image(im):
        """Raise ValueError unless ``im`` is a (B, 3, H, W) float tensor in [0, 1] with H, W multiples of 64.

        Inside ``torch.compile`` the value checks (here and of lambda) are left out: they read values back to
        the host, which would split the graph."""
        if not isinstance(im, torch.Tensor) or im.dim() != 4 or im.shape[1] != 3:
            shape = list(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
            raise ValueError(f'expected an image batch of shape (B, 3, H, W), got {shape}')
        if not im.is_floating_point():
            raise ValueError(f'expected a float image in [0, 1], got dtype {im.dtype}')
        h, w = im.shape[2:]
        if h % MAX_STRIDE or w % MAX_STRIDE or h == 0 or w == 0:
            raise ValueError(f'image height and width must be positive multiples of {MAX_STRIDE}, got {h}x{w} '
                             f'(pad first: lvae.evaluation pads by edge replication)')
        if torch.compiler.is_compiling():
            return
        lo, hi = torch.aminmax(im.detach())
        if not (lo >= 0 and hi <= 1):  # also catches NaN
            raise ValueError(f'image values must be in [0, 1], got range [{lo.item():.4g}, {hi.item():.4g}]')

    def preprocess_input(self, im):
        return (im + self.config.im_shift) * self.config.im_scale

    @staticmethod
    def preprocess_target(im):
        """[0, 1] -> [-1, 1], the scale in which the MSE distortion is measured."""
        return (im - 0.5) * 2

    @staticmethod
    def process_output(x_hat):
        """Decoder output in [-1, 1] scale -> image in [0, 1]."""
        return x_hat.clamp(-1, 1).mul(0.5).add(0.5)

    # ---------------------------------------------------------------- forward
    def encode(self, im, lmb):
        """The bottom-up pass: ``(emb, enc_features, bhw)`` for :meth:`decode`: the lambda embedding (B, E), the
        encoder's last feature at each height, and the (B, h, w) grid at 1/64 resolution."""
        self.check_image(im)
        lmb = self._check_lmb(lmb, im.shape[0])
        emb = self.lmb_embed(lmb)
        enc_features = self.encoder(self.preprocess_input(im), emb)
        return emb, enc_features, (im.shape[0], im.shape[2] // MAX_STRIDE, im.shape[3] // MAX_STRIDE)

    def decode(self, emb, bhw, enc_features=None, latents=None, t=1.0, get_latents=False, noise=None):
        """The top-down pass: ``(x_hat, stats)`` as :meth:`forward_end2end` returns them. With ``enc_features``
        (from :meth:`encode`) each latent is drawn from its posterior; without, from its prior at temperature ``t``,
        or taken from ``latents``."""
        nB, nH, nW = bhw
        feature = self.bias.expand(nB, -1, nH, nW).contiguous()  # a tensor of its own, not a view of the parameter
        stats_all = []
        for block in self.dec_blocks:
            if isinstance(block, LatentVariableBlock):
                i = len(stats_all)
                feature, stats = block(feature, emb,
                                       enc_feature=None if enc_features is None else enc_features[feature.shape[2]],
                                       latent=None if latents is None else latents[i], t=t, get_latent=get_latents,
                                       noise=noise)
                stats_all.append(stats)
            else:
                feature = block(feature)
        return feature, stats_all

    def forward_end2end(self, im, lmb, get_latents=False, noise=None):
        """Posterior pass: ``x_hat`` (B, 3, H, W) in [-1, 1] and one stats dict per latent (top-down), each
        with ``kl`` (B, Z, h, w) in nats (and ``z`` when ``get_latents``).

        ``noise(like)``, when given, supplies the posterior's standard normal draws (one call per latent,
        top-down) instead of :func:`standard_normal`: evaluation uses it to make draws independent of batching.
        """
        emb, enc_features, bhw = self.encode(im, lmb)
        return self.decode(emb, bhw, enc_features=enc_features, get_latents=get_latents, noise=noise)

    @staticmethod
    def kl_per_image(stats_all):
        """Total KL of each image in nats: list of per-latent stats -> (B,)."""
        return sum(stats['kl'].sum(dim=(1, 2, 3)) for stats in stats_all)

    def forward(self, im, lmb=None, kl_weight=1.0):
        if lmb is None:
            lmb = self.sample_lmb(im.shape[0])
        lmb = self._check_lmb(lmb, im.shape[0])
        x_hat, stats_all = self.forward_end2end(im, lmb)
        ndims = im.shape[1] * im.shape[2] * im.shape[3]
        rate = self.kl_per_image(stats_all) / ndims  # nats per dimension, (B,)
        distortion = F.mse_loss(x_hat, self.preprocess_target(im), reduction='none').mean(dim=(1, 2, 3))
        if callable(kl_weight):
            weighted = kl_weight([s['kl'] for s in stats_all]) / ndims
        elif isinstance(kl_weight, (int, float)):
            weighted = rate * kl_weight
        else:
            weighted = sum(w * s['kl'].sum(dim=(1, 2, 3)) for w, s in zip(kl_weight, stats_all, strict=True)) / ndims
        loss = (weighted + lmb * distortion).mean()
        with torch.no_grad():  # 0-dim tensors: reading them is the caller's choice (a host sync on a GPU)
            mse = F.mse_loss(self.process_output(x_hat.detach()), im)
            bppix = rate.mean() * (math.log2(math.e) * im.shape[1])
        return {'loss': loss, 'bppix': bppix, 'psnr': -10 * torch.log10(mse)}

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def conditional_sample(self, lmb, latents, bhw_repeat=(1, 1, 1), t=1.0):
        """Decode given latents (a list, one per latent block; ``None`` entries are drawn from the prior at
        temperature ``t``) on a (B, h, w) grid at 1/64 resolution -> images (B, 3, 64h, 64w) in [0, 1]."""
        lmb = self._check_lmb(lmb, bhw_repeat[0])
        if len(latents) > self.num_latents:
            raise ValueError(f'got {len(latents)} latents, the model has {self.num_latents}')
        latents = list(latents) + [None] * (self.num_latents - len(latents))
        x_hat, _ = self.decode(self.lmb_embed(lmb), bhw_repeat, latents=latents, t=t)
        return self.process_output(x_hat)

    @torch.no_grad()
    def unconditional_sample(self, lmb, bhw_repeat=(1, 1, 1), t=1.0):
        """Sample from the prior at temperature ``t``: images (B, 3, 64h, 64w) in [0, 1]."""
        return self.conditional_sample(lmb, [], bhw_repeat=bhw_repeat, t=t)
