"""The paper's training recipe as data: :class:`Recipe` (the optimisation flags with the paper's defaults) and
the rules it implies, the learning-rate schedule and the EMA decay (docs/contract.md, "The training update";
docs/training.md).

Iterations ``t`` count optimizer updates from 0. Learning rates are in the units of Adam's ``lr``.
"""
import math
import re
from dataclasses import asdict, dataclass, fields

LR_PERIOD = 10        # the LR is set at t % LR_PERIOD == 0 and held for the updates in between
SPIKE_WINDOW = 100    # gradient norms kept for the spike rule (spikes included)
SPIKE_FACTOR = 10.0   # an update whose norm exceeds this many times their median is a spike ...
SPIKE_LR_CUT = 0.1    # ... taken at this fraction of the held LR, without moving the EMA

KL_WARMUP_SCOPES = ('all', 'coarse')  # whose KL the warm-up weighs: every latent's, or all but the finest stage's
INITS = ('default', 'unit-gain')  # the model's own initialisation; lvae.training.init.unit_gain_
_CONST_COS = re.compile(r'const-([0-9]*\.?[0-9]+)-cos')
_ALIASES = {'constant': 'const', 'cosine': 'cos'}


@dataclass
class Recipe:
    """How a model is trained: field names are those of ``train-var-rate.py``'s flags, defaults the paper's.

    ``lr_sched``: ``'const-F-cos'`` (1 until ``round(F * iterations)``, then a cosine to ``lrf_min``),
    ``'const'`` / ``'constant'``, ``'cos'`` / ``'cosine'`` (the cosine from the end of the warm-up).
    ``grad_clip`` 0 turns clipping off. ``ema_warmup`` 0 means ``iterations // 20`` (the authors' rule).
    ``accum_num`` micro-batches per update and ``amp`` (``'none'`` or ``'bf16'`` autocast) are ours; with their
    defaults an update is the paper's. So are two options for models that leave their coarse latents unused
    (docs/sources.md, "Closing the gap"), off by default: ``kl_warmup`` N > 0 weighs the rate in the loss by
    ``min(1, (t + 1) / N)`` (the bounded objective from update N on): the KL of every latent, or with
    ``kl_warmup_scope='coarse'`` of all but the finest stage's, which pay in full from the start; and
    ``init='unit-gain'`` re-initialises the maps between the stages to keep the signal's variance
    (:func:`lvae.training.init.unit_gain_`). Two more act on each latent's KL in the first updates only
    (:class:`LatentRates`), the bounded objective after them: ``kl_balance`` N > 0 balances the latents' KL for
    the first N updates as NVAE does, and ``free_bits`` F > 0 lets a latent's batch-mean KL below F nats per
    element cost nothing for the first ``free_bits_until`` updates.
    """
    lr: float = 2e-4
    lr_sched: str = 'const-0.5-cos'
    lrf_min: float = 0.01
    lr_warmup: int = 0
    grad_clip: float = 2.0
    iterations: int = 200_000
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmup: int = 10_000
    accum_num: int = 1
    amp: str = 'none'
    kl_warmup: int = 0
    kl_warmup_scope: str = 'all'
    kl_balance: int = 0
    free_bits: float = 0.0
    free_bits_until: int = 0
    init: str = 'default'

    def __post_init__(self):
        for name in ('iterations', 'accum_num'):
            if getattr(self, name) < 1:
                raise ValueError(f'--{name} must be >= 1, got {getattr(self, name)}')
        for name in ('lr_warmup', 'grad_clip', 'ema_warmup', 'kl_warmup', 'kl_balance', 'free_bits',
                     'free_bits_until'):
            if getattr(self, name) < 0:
                raise ValueError(f'--{name} must be >= 0, got {getattr(self, name)}')
        if not self.lr > 0 or not 0 <= self.lrf_min <= 1 or not 0 <= self.ema_decay < 1:
            raise ValueError(f'need --lr > 0, 0 <= --lrf_min <= 1 and 0 <= --ema_decay < 1, got lr {self.lr}, '
                             f'lrf_min {self.lrf_min}, ema_decay {self.ema_decay}')
        if self.amp not in ('none', 'bf16'):
            raise ValueError(f"--amp must be 'none' or 'bf16', got {self.amp!r}")
        if self.kl_warmup_scope not in KL_WARMUP_SCOPES:
            raise ValueError(f"--kl_warmup_scope must be one of {', '.join(map(repr, KL_WARMUP_SCOPES))}, got "
                             f"{self.kl_warmup_scope!r}")
        if (self.free_bits > 0) != (self.free_bits_until > 0):
            raise ValueError(f'--free_bits and --free_bits_until go together (a floor and the updates it lasts), '
                             f'got {self.free_bits} and {self.free_bits_until}')
        if self.init not in INITS:
            raise ValueError(f"--init must be one of {', '.join(map(repr, INITS))}, got {self.init!r}")
        self.flat_fraction()  # checks the schedule's name

    @classmethod
    def from_flags(cls, args):
        """The recipe of parsed flags (an ``argparse.Namespace`` or dict); other keys are ignored."""
        values = args if isinstance(args, dict) else vars(args)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_dict(self):
        return asdict(self)

    def flat_fraction(self):
        """The fraction of the run before the cosine starts: F of 'const-F-cos', 0 for 'cos', None for 'const'."""
        sched = _ALIASES.get(self.lr_sched, self.lr_sched)
        match = _CONST_COS.fullmatch(sched)
        if sched == 'const':
            return None
        if sched == 'cos':
            return 0.0
        if match and float(match.group(1)) <= 1:
            return float(match.group(1))
        raise ValueError(f"--lr_sched must be 'const', 'cos' or 'const-F-cos' (0 <= F <= 1), got {self.lr_sched!r}")

    def lr_factor(self, t):
        """The schedule's multiplier of ``lr`` at iteration ``t``: ``(t + 1) / lr_warmup`` during the warm-up,
        then 1 until the cosine's start ``b``, then ``lrf_min + (1 - lrf_min) / 2 * (1 + cos(pi * (t - b) /
        (iterations - b - 1)))``, which reaches ``lrf_min`` at the last iteration."""
        if t < self.lr_warmup:
            return (t + 1) / self.lr_warmup
        flat = self.flat_fraction()
        if flat is None:
            return 1.0
        start = round(flat * self.iterations) if flat > 0 else self.lr_warmup
        if flat > 0 and t <= start:
            return 1.0
        progress = (t - start) / max(1, self.iterations - start - 1)
        return self.lrf_min + 0.5 * (1 - self.lrf_min) * (1 + math.cos(math.pi * min(progress, 1.0)))

    def held_lr(self, t):
        """The LR of update ``t`` without spikes: the schedule at the last multiple of :data:`LR_PERIOD`."""
        return self.lr * self.lr_factor(t - t % LR_PERIOD)

    def kl_weight(self, t, dec_nums=None):
        """The weight of the rate in the loss of update ``t``: ``min(1, (t + 1) / kl_warmup)``, 1 without a warm-up
        or after it (the paper's objective, which is what the bound measures). With ``kl_warmup_scope='coarse'``
        one weight per latent of a model with ``dec_nums`` latents per stage, 1 for the finest stage's. While
        ``kl_balance`` or ``free_bits`` act, a :class:`LatentRates` of those weights."""
        beta = min(1.0, (t + 1) / self.kl_warmup) if self.kl_warmup else 1.0
        if beta != 1 and self.kl_warmup_scope == 'coarse':
            beta = [beta] * (sum(dec_nums) - dec_nums[-1]) + [1.0] * dec_nums[-1]
        balance, floor = t < self.kl_balance, self.free_bits if t < self.free_bits_until else 0.0
        return LatentRates(beta, balance, floor) if balance or floor else beta

    def ema_decay_at(self, t):
        """The EMA decay of the update at iteration ``t``: ``ema_decay * (1 - exp(-t / ema_warmup))``."""
        warmup = self.ema_warmup or max(1, self.iterations // 20)
        return self.ema_decay * (1 - math.exp(-t / warmup))


class LatentRates:
    """The rate term of a loss from each latent's KL, for the first updates of a run whose coarse latents would
    otherwise stay unused (a callable ``kl_weight`` of the model's forward): ``beta`` (a number or one per latent)
    weighs each latent's KL after

    - ``balance``: NVAE's balancing (its ``kl_balancer``): latent i's KL is weighted by ``c_i``, proportional to
      its batch-mean KL over its size ``a_i`` (elements per image, relative to their mean), divided by ``a_i``,
      normalised to a mean of 1 over the latents and never differentiated; a latent that carries little pays
      little until it is used;
    - ``floor`` F > 0 (free bits): a latent whose batch-mean KL is below F nats per element costs F per element
      and gets no gradient from its KL.

    Called with the latents' KL maps (a list of (B, Z, h, w) tensors, nats); returns the rate (B,) in nats."""

    def __init__(self, beta, balance=False, floor=0.0):
        self.beta, self.balance, self.floor = beta, balance, floor

    def __call__(self, kl_maps):
        kls = [k.sum(dim=(1, 2, 3)) for k in kl_maps]                     # (B,) nats per latent
        sizes = [k[0].numel() for k in kl_maps]
        if self.floor:
            floors = [self.floor * n for n in sizes]
            used = [(k.mean() >= f).to(k.dtype).detach() for k, f in zip(kls, floors)]
            kls = [u * k + (1 - u) * f for u, k, f in zip(used, kls, floors)]
        if self.balance:
            mean_size = sum(sizes) / len(sizes)
            alpha = [n / mean_size for n in sizes]
            coeff = [(k / a).abs().mean().detach() + 0.01 for k, a in zip(kls, alpha)]
            total = sum(coeff)
            coeff = [c / a * total for c, a in zip(coeff, alpha)]
            mean_coeff = sum(coeff) / len(coeff)
            kls = [c / mean_coeff * k for c, k in zip(coeff, kls)]
        betas = self.beta if isinstance(self.beta, list) else [self.beta] * len(kls)
        return sum(b * k for b, k in zip(betas, kls, strict=True))
