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
from dataclasses import asdict, dataclass

import torch

from lvae.models.rd.model import LatentVariableBlock

PARAMETRISATION = "offsets to the encoder's posterior pre-activations (mean and std heads), per latent and position"


@dataclass
class Refinement:
    """How posteriors are refined: ``steps`` Adam steps at learning rate ``lr`` (0 steps: the plain bound)."""
    steps: int
    lr: float = 0.01

    def __post_init__(self):
        if int(self.steps) < 0 or not self.lr > 0:
            raise ValueError(f'refinement needs steps >= 0 and lr > 0, got steps {self.steps}, lr {self.lr}')
        self.steps = int(self.steps)

    def record(self, seed):
        """What a result records of the refinement."""
        return {**asdict(self), 'parametrisation': PARAMETRISATION, 'optimiser': 'Adam', 'seed': seed,
                'draws': 'the bound from a fresh draw with the evaluation seeds, not those of the optimisation'}


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


def refine_posteriors(model, padded, im, lmb, refinement, noise, amp=None):
    """The posterior offsets of each image and lambda after ``refinement``: ``padded`` (n, 3, H', W') the images
    padded to multiples of 64, ``im`` (n or 1, 3, H, W) the images themselves, ``lmb`` (n,); ``noise(like)`` gives
    the optimisation's standard normal draws. Returns the list of offsets (one per latent block)."""
    if not hasattr(model, 'dec_blocks'):
        raise ValueError(f'{type(model).__name__} has no posterior to refine')
    h, w = im.shape[2:]
    target = model.preprocess_target(im)
    dims = im.shape[1] * h * w
    offsets = [None] * len(latent_blocks(model))
    autocast = torch.autocast(padded.device.type, dtype=torch.bfloat16, enabled=amp == 'bf16')
    with frozen(model), torch.enable_grad(), posterior_offsets(model, offsets):
        with torch.no_grad(), autocast:
            emb, features, bhw = model.encode(padded, lmb)
        optimiser = None
        for _ in range(refinement.steps):
            with autocast:
                x_hat, stats = model.decode(emb, bhw, enc_features=features, noise=noise)
            rate = model.kl_per_image(stats) / dims                                       # nats per dimension
            distortion = (x_hat.float()[:, :, :h, :w] - target).square().mean(dim=(1, 2, 3))   # [-1, 1] scale
            loss = (rate + lmb * distortion).sum()  # each image and lambda has its own offsets: a sum of losses
            if optimiser is None:
                optimiser = torch.optim.Adam([o for o in offsets if o is not None], lr=refinement.lr)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return [o.detach() if o is not None else None for o in offsets]
