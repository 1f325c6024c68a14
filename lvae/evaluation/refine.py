"""Posterior refinement: a tighter bound from the same weights.

For a fixed decoder and prior, any posterior ``q(z | x)`` is a channel from the image to the latents, with rate at
most ``E KL(q(z | x) || p(z))`` and distortion ``E d(x, g(z))``: an achievable pair, so a point of an upper bound
on R(D). The encoder gives each image its posterior in one shot (amortised); here each image's posterior is improved
for its lambda by gradient steps on its own ``KL + lambda * distortion`` (the training objective, nats per dimension
plus lambda times the MSE in the [-1, 1] scale over the image's own pixels), with the decoder and the prior fixed.

Parametrisation: an offset to the encoder's output of every latent block's posterior head (the 2Z pre-activation
channels that become the posterior's mean and standard deviation), one per position, image and lambda, starting at
zero (the plain posterior) and optimised with Adam on reparameterised draws. The posterior of a latent still depends
on the latents above it through the decoder, as the model's does.

The bound is then computed as usual from a fresh draw with the evaluation's seeds, never the draws the optimisation
saw: the refined channel is a function of the image (and of the optimisation's own random draws, independent of the
image), so its KL estimate is unbiased and the point stays an upper bound (docs/evaluation.md, "Refinement").
"""
import contextlib
from dataclasses import asdict, dataclass, replace

import torch

from lvae.models.rd.model import LatentVariableBlock

PARAMETRISATION = "offsets to the encoder's posterior pre-activations (mean and std heads), per latent and position"


AUTO = 'auto'
FIXED_LR = 0.01  # the learning rate of a fixed number of steps (``refine=N``)


@dataclass
class Refinement:
    """How posteriors are refined: ``steps`` Adam steps at learning rate ``lr`` (0 steps: the plain bound; ``lr``
    default :data:`FIXED_LR`), or ``steps='auto'``: from ``lr`` (default :attr:`Convergence.lr`) until converged, by
    ``rule`` (default: :class:`Convergence`'s defaults)."""
    steps: object
    lr: float = None
    rule: 'Convergence' = None
    max_lr = 1.0  # an Adam step moves each offset by about lr: more than 1 throws a posterior far from the data

    def __post_init__(self):
        if self.steps != AUTO:
            if isinstance(self.steps, bool) or not str(self.steps).isdigit():  # a whole number >= 0
                raise ValueError(f"refinement needs steps >= 0 or 'auto', got steps {self.steps!r}")
            self.steps = int(self.steps)
            if self.rule is not None:
                raise ValueError(f'a convergence rule goes with steps=\'auto\', not steps={self.steps}')
        self.rule = self.rule or (Convergence() if self.steps == AUTO else None)
        self.lr = float(self.lr if self.lr is not None else self.rule.lr if self.rule else FIXED_LR)
        if not 0 < self.lr <= self.max_lr:
            raise ValueError(f'refinement needs 0 < lr <= {self.max_lr:g}, got lr {self.lr}')

    @property
    def auto(self):
        return self.steps == AUTO

    def record(self, seed):
        """What a result records of the refinement."""
        rule = {'rule': asdict(self.rule)} if self.auto else {}
        return {'steps': self.steps, 'lr': self.lr, **rule, 'parametrisation': PARAMETRISATION, 'optimiser': 'Adam',
                'seed': seed, 'draws': 'the bound from a fresh draw with the evaluation seeds, not those of the '
                                      'optimisation'}


@dataclass
class Convergence:
    """When ``refine='auto'`` stops (docs/evaluation.md, "Refinement to convergence"): Adam from ``lr``; every
    ``window`` steps the gain is the relative fall of each image and lambda's loss, averaged over the window, from
    the window before, averaged over the images and lambdas refined together (one draw's noise averages out there);
    once the gain falls under ``tol`` the learning rate is cut by ``factor``, and after ``cuts`` such cuts the
    refinement stops (at ``max_steps`` at the latest). Measured in benchmarks/refine_convergence.py."""
    lr: float = 0.03
    window: int = 20
    tol: float = 3e-3
    factor: float = 0.3
    cuts: int = 2
    max_steps: int = 1500

    def __post_init__(self):
        self.previous, self.sums, self.cut, self.steps = None, None, 0, 0

    def update(self, losses, optimiser):
        """Count a step whose per-item losses were ``losses`` (n,); returns whether to stop."""
        self.steps += 1
        self.sums = losses.detach().double() if self.sums is None else self.sums + losses.detach().double()
        if self.steps % self.window:
            return self.steps >= self.max_steps
        mean, self.sums = self.sums / self.window, None
        if self.previous is not None:
            gain = float(((self.previous - mean) / mean.abs().clamp_min(1e-12)).mean())
            if gain < self.tol:
                if self.cut == self.cuts:
                    return True
                self.cut += 1
                for group in optimiser.param_groups:
                    group['lr'] *= self.factor
        self.previous = mean
        return self.steps >= self.max_steps


def latent_blocks(model):
    return [b for b in model.dec_blocks if isinstance(b, LatentVariableBlock)]


@contextlib.contextmanager
def posterior_offsets(model, offsets):
    """Inside the block, latent block i's posterior head outputs its usual value plus ``offsets[i]`` (a tensor or
    None: created as zeros, with gradients, at the first forward)."""
    def hook(i):
        def add(module, inputs, out):
            if offsets[i] is None:
                offsets[i] = torch.zeros_like(out, dtype=torch.float32, requires_grad=True)
            return out + offsets[i]
        return add
    handles = [b.posterior.register_forward_hook(hook(i)) for i, b in enumerate(latent_blocks(model))]
    try:
        yield offsets
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def frozen(model):
    """The model's parameters without gradients inside the block (restored after)."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def refine_posteriors(model, padded, im, lmb, refinement, noise, amp=None, on_step=None):
    """The posterior offsets of each image and lambda after ``refinement``: ``padded`` (n, 3, H', W') the images
    padded to multiples of 64, ``im`` (n or 1, 3, H, W) the images themselves, ``lmb`` (n,); ``noise(like)`` gives
    the optimisation's standard normal draws; ``on_step(step, losses, offsets)``, when given, is called after each
    step with the (n,) losses it took. Returns the list of offsets (one per latent block)."""
    if not hasattr(model, 'dec_blocks'):
        raise ValueError(f'{type(model).__name__} has no posterior to refine')
    h, w = im.shape[2:]
    target = model.preprocess_target(im)
    dims = im.shape[1] * h * w
    offsets = [None] * len(latent_blocks(model))
    autocast = torch.autocast(padded.device.type, dtype=torch.bfloat16, enabled=amp == 'bf16')
    rule = replace(refinement.rule) if refinement.auto else None  # a fresh count for these images
    with frozen(model), torch.enable_grad(), posterior_offsets(model, offsets):
        with torch.no_grad(), autocast:
            emb, features, bhw = model.encode(padded, lmb)
        optimiser = None
        step = 0
        while rule is not None or step < refinement.steps:
            with autocast:
                x_hat, stats = model.decode(emb, bhw, enc_features=features, noise=noise)
            rate = model.kl_per_image(stats) / dims                                       # nats per dimension
            distortion = (x_hat.float()[:, :, :h, :w] - target).square().mean(dim=(1, 2, 3))   # [-1, 1] scale
            losses = rate + lmb * distortion
            if optimiser is None:
                optimiser = torch.optim.Adam([o for o in offsets if o is not None], lr=refinement.lr)
            optimiser.zero_grad(set_to_none=True)
            losses.sum().backward()  # each image and lambda has its own offsets: a sum of losses
            optimiser.step()
            step += 1
            if on_step is not None:
                on_step(step, losses.detach(), offsets)
            if rule is not None and rule.update(losses, optimiser):
                break
    return [o.detach() if o is not None else None for o in offsets]
