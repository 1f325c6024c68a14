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
import math
from dataclasses import asdict, dataclass

import torch

from lvae.evaluation.choices import AUTO, AUTO_LR, FIXED_LR, MAX_LR
from lvae.models.rd.model import LatentVariableBlock

PARAMETRISATION = "offsets to the encoder's posterior pre-activations (mean and std heads), per latent and position"


@dataclass
class Refinement:
    """How posteriors are refined: ``steps`` Adam steps at learning rate ``lr`` (0 steps: the plain bound; ``lr``
    default :data:`FIXED_LR`), or ``steps='auto'``: from ``lr`` (default :attr:`Convergence.lr`) until converged, by
    ``rule`` (default: :class:`Convergence`'s defaults)."""
    steps: object
    lr: float = None
    rule: 'Convergence' = None
    max_lr = MAX_LR

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
    """When ``refine='auto'`` stops (docs/evaluation.md, "Refinement to convergence"), for each image, lambda and
    draw on its own: Adam from ``lr``; every ``window`` steps the gain is the relative fall of the item's loss,
    averaged over the window, from the window before; once it falls under ``tol`` the item's learning rate is cut by
    ``factor``, and after ``cuts`` such cuts the item stops (at ``max_steps`` at the latest). An item's steps and
    figures depend on nothing refined beside it. ``chain``: an image's lambdas are refined in ascending order, each
    from the refined offsets of the lambdas below it (the lowest from the encoder's posterior; the second from the
    first's; each next one from the two below, extrapolated linearly in log lambda), and such a warm item starts
    after the first cut (from ``lr * factor``, ``cuts - 1`` cuts left): its steps and figures depend on the
    lambdas below it in the grid, and on nothing else refined beside it. ``tail``: 0, an item stops on the plateau
    after its last cut; n > 0, an item that has taken its last cut takes ``n`` windows more, without waiting for a
    plateau, and its offsets are the mean of its iterates over its last window (Polyak-Ruppert averaging: the mean of
    Adam's iterates at a small fixed rate sits nearer the optimum than the last of them, which the gradient noise
    keeps moving). :data:`CHAIN` is the chain of ``--refine-chain``. Measured in benchmarks/refine_convergence.py."""
    lr: float = AUTO_LR
    window: int = 20
    tol: float = 3e-3
    factor: float = 0.3
    cuts: int = 2
    max_steps: int = 1500
    chain: bool = False
    tail: int = 0

    def __post_init__(self):
        if isinstance(self.tail, bool) or not isinstance(self.tail, int) or self.tail < 0:
            raise ValueError(f'a convergence rule needs a whole number of windows tail >= 0, got tail {self.tail!r}')

    def tracker(self, warm=False):
        """A fresh count for one item (``warm``: one that starts from another's refined offsets, after the first
        cut): its :meth:`_Plateaus.update` takes each step's loss."""
        return _Plateaus(self, warm)


CHAIN = Convergence(window=15, chain=True, tail=3)   # the rule of --refine-chain (docs/evaluation.md)


class _Plateaus:
    """One item's progress under a :class:`Convergence`."""

    def __init__(self, rule, warm=False):
        self.rule, self.previous, self.total, self.steps = rule, None, 0.0, 0
        self.cut = 1 if warm and rule.cuts else 0
        self.last_cut_at = None  # the step of the last cut this item took (Convergence.tail)

    def update(self, loss, optimiser):
        """Count a step whose loss was ``loss`` (a float); cut ``optimiser``'s rate on a plateau; returns whether
        the item stops."""
        rule = self.rule
        self.steps += 1
        self.total += loss
        if self.steps % rule.window:
            return self.steps >= rule.max_steps
        mean, self.total = self.total / rule.window, 0.0
        if self.last_cut_at is not None and self.steps - self.last_cut_at == rule.tail * rule.window:
            return True   # the tail after the last cut
        if self.previous is not None and (self.previous - mean) / max(abs(mean), 1e-12) < rule.tol:
            if self.cut == rule.cuts:
                return True
            self.cut += 1
            for group in optimiser.param_groups:
                group['lr'] *= rule.factor
            if rule.tail and self.cut == rule.cuts:
                self.last_cut_at = self.steps
        self.previous = mean
        return self.steps >= rule.max_steps


def latent_blocks(model):
    return [b for b in model.dec_blocks if isinstance(b, LatentVariableBlock)]


@contextlib.contextmanager
def posterior_offsets(model, offsets):
    """Inside the block, latent block i's posterior head outputs its usual value plus ``offsets[i]`` (as
    :func:`refine_posteriors` returns them, one row per image of the batch)."""
    def hook(i):
        return lambda module, inputs, out: out + offsets[i]
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


def noise_from(generators):
    """A ``noise(like)`` for :meth:`forward_end2end`: sample b of the batch draws from ``generators[b]`` on the
    generator's device, then moves them to ``like``'s device (a no-op where they are the same)."""
    def noise(like):
        return torch.stack([torch.randn(like.shape[1:], generator=g, dtype=like.dtype, device=g.device)
                            for g in generators]).to(like.device)
    return noise


class _Item:
    """One image, lambda and draw being refined: its offsets (one (1, 2Z, h, w) tensor per latent block, made at
    its first forward unless it starts from ``start``, another item's refined offsets), its own Adam, its own
    stopping rule and its own stream of draws; under :attr:`Convergence.tail`, the sum of its iterates over the
    current window (``window_sum``), which become its offsets when it stops."""

    def __init__(self, index, refinement, generator, start=None):
        self.index, self.refinement, self.generator = index, refinement, generator
        self.optimiser, self.steps, self.loss, self.done, self.window_sum = None, 0, None, False, None
        self.offsets = None if start is None else [s.detach().clone().float().requires_grad_(True) for s in start]
        self.tracker = refinement.rule.tracker(warm=start is not None) if refinement.auto else None
        self.lr = refinement.lr * (refinement.rule.factor ** self.tracker.cut if self.tracker else 1)  # its cuts so far

    def step(self, loss):
        """Adam's step on the gradient the backward left, then the rule's word on the item's ``loss`` (a float)."""
        if self.optimiser is None:
            self.optimiser = torch.optim.Adam(self.offsets, lr=self.lr)
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)
        self.steps, self.loss = self.steps + 1, loss
        self.done = (self.tracker.update(loss, self.optimiser) if self.tracker is not None else
                     self.steps >= self.refinement.steps)
        if self.tracker is not None and self.tracker.rule.tail:
            self._average()

    @torch.no_grad()
    def _average(self):
        """Add this step's iterate to the window's sum; where the item stops, its offsets become the window's mean."""
        window = self.tracker.rule.window
        if (self.steps - 1) % window == 0:   # a window's first step
            self.window_sum = [o.detach().clone() for o in self.offsets]
        else:
            for total, o in zip(self.window_sum, self.offsets):
                total.add_(o.detach())
        if self.done:
            count = (self.steps - 1) % window + 1
            self.offsets = [total / count for total in self.window_sum]
            self.window_sum = None


@contextlib.contextmanager
def _items_offsets(model, items):
    """Inside the block, latent block i's posterior head outputs its usual value plus the offsets of ``items`` (the
    batch, in order), made as zeros with gradients at the first forward."""
    def hook(i):
        def add(module, inputs, out):
            for item in items:
                if item.offsets is None:
                    item.offsets = []
                if len(item.offsets) == i:
                    item.offsets.append(torch.zeros_like(out[:1], dtype=torch.float32, requires_grad=True))
            return out + torch.cat([item.offsets[i] for item in items])
        return add
    handles = [b.posterior.register_forward_hook(hook(i)) for i, b in enumerate(latent_blocks(model))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def refine_posteriors(model, padded, im, lmb, refinement, generators, amp=None, on_step=None, start=None):
    """Refine the posterior of each of n items (an image at a lambda, with its own draws) until each stops on its own:
    ``padded`` (n, 3, H', W') the images padded to multiples of 64, ``im`` (n or 1, 3, H, W) the images themselves,
    ``lmb`` (n,), ``generators`` one per item for the optimisation's standard normal draws. An item that stops
    leaves the batch: its offsets, its steps and the draws it saw depend on nothing else in it. ``on_step(batch)``,
    when given, is called after each step with the items that took it (each with its ``index``, ``steps``, the
    ``loss`` of the step and its ``offsets``, one (1, 2Z, h, w) tensor per latent block). ``start``: offsets the
    items start from (as returned here, e.g. those of a neighbouring lambda; warm items, see
    :attr:`Convergence.chain`), instead of zeros (the encoder's posterior).

    Returns ``(offsets, steps)``: one (n, 2Z, h, w) tensor per latent block, and the steps each item took (a list)."""
    if not hasattr(model, 'dec_blocks'):
        raise ValueError(f'{type(model).__name__} has no posterior to refine')
    h, w = im.shape[2:]
    target = model.preprocess_target(im)
    dims = im.shape[1] * h * w
    items = [_Item(k, refinement, g, None if start is None else [s[k:k + 1] for s in start])
             for k, g in enumerate(generators)]
    autocast = torch.autocast(padded.device.type, dtype=torch.bfloat16, enabled=amp == 'bf16')
    with frozen(model), torch.enable_grad():
        with torch.no_grad(), autocast:
            emb, features, bhw = model.encode(padded, lmb)
        active = [k for k, item in enumerate(items) if refinement.auto or refinement.steps]
        while active:
            batch = [items[k] for k in active]
            with _items_offsets(model, batch), autocast:
                x_hat, stats = model.decode(emb, bhw, enc_features=features, noise=noise_from([i.generator
                                                                                               for i in batch]))
            rate = model.kl_per_image(stats) / dims                                       # nats per dimension
            distortion = (x_hat.float()[:, :, :h, :w] - target).square().mean(dim=(1, 2, 3))   # [-1, 1] scale
            losses = rate + lmb * distortion
            losses.sum().backward()  # each item has its own offsets: a sum of losses
            for item, loss in zip(batch, losses.detach().double().tolist()):
                item.step(loss)
            if on_step is not None:
                on_step(batch)
            rows = [r for r, item in enumerate(batch) if not item.done]
            if 0 < len(rows) < len(batch):  # the items that stopped leave the batch
                at = torch.tensor(rows, dtype=torch.long, device=padded.device)
                emb, lmb, features = emb[at], lmb[at], {k: v[at] for k, v in features.items()}
                target = target[at] if target.shape[0] > 1 else target
                bhw = (len(rows), *bhw[1:])
            active = [active[r] for r in rows]
    if not all(item.steps for item in items):
        return None, [0] * len(items)
    offsets = [torch.cat([item.offsets[i] for item in items]).detach() for i in range(len(items[0].offsets))]
    return offsets, [item.steps for item in items]


def refine_chain(model, padded, im, lmb, refinement, generators, amp=None, on_step=None):
    """:func:`refine_posteriors` along the lambdas (:attr:`Convergence.chain`): the items at the lowest lambda of
    ``lmb`` from the encoder's posterior, then those at each next lambda from the refined offsets of the items at
    the lambdas below them, extrapolated linearly in log lambda from the two below (the i-th item at a lambda, in
    the order given, continues the i-th at the lambdas below: one chain per draw). Every lambda needs the same
    number of items. Arguments and return as :func:`refine_posteriors`'s."""
    values = lmb.tolist()
    rows = {v: [i for i, x in enumerate(values) if x == v] for v in sorted(set(values))}
    if len({len(r) for r in rows.values()}) > 1:
        raise ValueError(f'a chain of refinements needs as many items at each lambda, got '
                         f'{ {v: len(r) for v, r in rows.items()} }')
    offsets, steps, below = [None] * len(values), [0] * len(values), []   # below: (log lambda, offsets), nearest last
    for value, at in rows.items():
        start = below[-1][1] if below else None
        if len(below) == 2:   # on the line through the two below, in log lambda
            (x0, o0), (x1, o1) = below
            slope = (math.log(value) - x1) / (x1 - x0)
            start = [b + slope * (b - a) for a, b in zip(o0, o1)]
        index = torch.tensor(at, device=padded.device)
        found, taken = refine_posteriors(model, padded[index], im if im.shape[0] == 1 else im[index], lmb[index],
                                         refinement, [generators[i] for i in at], amp, on_step, start=start)
        if found is None:  # zero steps: nothing refined
            return None, steps
        for r, i in enumerate(at):
            offsets[i], steps[i] = [o[r:r + 1] for o in found], taken[r]
        below = [*below[-1:], (math.log(value), found)]
    return [torch.cat([o[b] for o in offsets]) for b in range(len(offsets[0]))], steps
