"""One update of the paper's recipe, callable from a notebook, a test or ``train-var-rate.py``.

>>> trainer = Trainer(model, Recipe(iterations=2000))
>>> out = trainer.step(images)               # images (B, 3, H, W) in [0, 1]; lambdas drawn by the model
>>> out['loss'], out['grad_norm'], out['lr'], out['ema_updated']

Every decision of an update is taken on the device: a step never reads a tensor on the host, so a CUDA run
queues updates without waiting. Beyond the authors' loop, and changing nothing in a finite run: an update whose
loss or gradient norm is not finite is skipped (weights, Adam and EMA untouched, its norm not recorded) and
counted; ``bad_in_row`` tells a caller when to give up.
"""
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lvae.training.recipe import LR_PERIOD, SPIKE_FACTOR, SPIKE_LR_CUT, SPIKE_WINDOW, Recipe

COUNTERS = ('bad_steps', 'spikes', 'bad_in_row', 'longest_bad_run')


def judge_update(loss, grad_norm, norms):
    """The skip rules on 0-d tensors: ``(non_finite, spike, norms)``. ``norms`` (SPIKE_WINDOW,) holds the recent
    gradient norms, oldest first, NaN where none is known yet; the returned buffer has ``grad_norm`` appended
    unless the update is non-finite. A spike: ``grad_norm > SPIKE_FACTOR * median(norms with grad_norm)``
    (the lower median of an even count, as ``torch.median``)."""
    non_finite = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
    shifted = torch.cat([norms[1:], grad_norm.detach().float().reshape(1)])
    norms = torch.where(non_finite, norms, shifted)
    spike = ~non_finite & (grad_norm > SPIKE_FACTOR * torch.nanmedian(norms))
    return non_finite, spike, norms


def process_group_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class Trainer:
    """Adam, the LR schedule, clipping, the spike rule and the EMA of :class:`Recipe` around ``model``.

    ``model``: a :class:`~lvae.VariableRateLossyVAE` (or any module whose ``forward(im[, lmb])`` returns a
    dict with a 0-d ``'loss'``, ``'bppix'`` and ``'psnr'``), already on its device and in its final form (e.g.
    after :func:`lvae.accel.prepare`). Under an initialised process group of several ranks it is wrapped in
    DDP, and only rank 0 keeps the EMA (``ema`` False turns it off everywhere). ``trainer.model`` is the plain
    module, ``trainer.ema`` timm's ``ModelEmaV3`` (weights in ``.module``) or None.
    """

    def __init__(self, model, recipe=None, ema=None):
        self.recipe = recipe if recipe is not None else Recipe()
        self.model = model
        self.world = process_group_size()
        device = next(model.parameters()).device
        self.device = device
        self.ema = None
        keep_ema = self.recipe.ema if ema is None else ema
        if keep_ema and (self.world == 1 or dist.get_rank() == 0):
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=self.recipe.ema_decay)
            self.ema.module.requires_grad_(False)
        self.forward = model if self.world == 1 else DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
        self._lr = torch.full((), self.recipe.held_lr(0), device=device)   # shared by every param group
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self._lr, fused=True)
        self.norms = torch.full((SPIKE_WINDOW,), float('nan'), device=device)
        self.counters = {k: torch.zeros((), dtype=torch.int64, device=device) for k in COUNTERS}
        self.iter = 0

    # ------------------------------------------------------------------------------------------------ update
    def step(self, images, lmb=None):
        """One optimizer update on ``images``: a (B, 3, H, W) tensor in [0, 1], or a list of them (micro-batches
        whose gradients are averaged; ``lmb`` then a matching list). ``lmb`` (B,) or None: the model draws the
        training lambdas. Returns 0-d device tensors: ``loss``, ``bppix``, ``psnr`` (averaged over micro-batches
        and ranks), ``grad_norm`` (before clipping), ``lr`` (of this update), ``ema_updated``, ``spike``,
        ``non_finite``; then ``iter`` counts this update."""
        micro = list(images) if isinstance(images, (list, tuple)) else [images]
        lambdas = list(lmb) if isinstance(lmb, (list, tuple)) else [lmb] * len(micro)
        if len(lambdas) != len(micro):
            raise ValueError(f'{len(micro)} micro-batches of images but {len(lambdas)} of lambdas')
        for im in micro:
            self._check_batch(im)
        if self.iter % LR_PERIOD == 0:
            self._lr.fill_(self.recipe.held_lr(self.iter))
        try:
            figures = self._forward_backward(micro, lambdas)
        except BaseException:  # leave the trainer as it was: no gradient of this update carried into the next
            self.optimizer.zero_grad(set_to_none=True)
            raise
        clip = self.recipe.grad_clip or float('inf')
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        non_finite, spike, self.norms = judge_update(figures[0], grad_norm, self.norms)
        self._lr.mul_(torch.where(spike, SPIKE_LR_CUT, 1.0))
        lr = self._lr.clone()
        self.optimizer.found_inf = non_finite.float()  # fused Adam skips its step where found_inf is 1
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        moved = ~(non_finite | spike)
        if self.ema is not None:
            decay = torch.full((), self.recipe.ema_decay_at(self.iter), dtype=torch.float64, device=self.device)
            self.ema.apply_update_(self.model, decay=torch.where(moved, decay, 1.0))
        else:
            moved = torch.zeros_like(moved)
        self._count(non_finite, spike)
        self.iter += 1
        loss, bppix, psnr = figures
        return {'loss': loss, 'bppix': bppix, 'psnr': psnr, 'grad_norm': grad_norm.detach(), 'lr': lr,
                'ema_updated': moved, 'spike': spike, 'non_finite': non_finite}

    def _check_batch(self, im):
        """A ValueError naming what is wrong with a micro-batch that the model cannot take."""
        dtype = next(self.model.parameters()).dtype
        if not isinstance(im, torch.Tensor) or im.dim() != 4:
            shape = list(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
            raise ValueError(f'Trainer.step: images must be (B, 3, H, W) tensors in [0, 1], got {shape}')
        if len(im) == 0:
            raise ValueError('Trainer.step: an empty batch (0 images): every micro-batch needs at least one image')
        if im.dtype != dtype:
            raise ValueError(f'Trainer.step: images must be {dtype} like the model, got {im.dtype} (convert them with '
                             f'.to({dtype}))')

    def _forward_backward(self, micro, lambdas):
        """Gradients of the mean loss over the micro-batches (DDP all-reduces them at the last one); returns
        (3,) ``[loss, bppix, psnr]`` averaged over micro-batches and ranks."""
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.recipe.amp == 'bf16' \
            else nullcontext()
        figures = torch.zeros(3, device=self.device)
        weight = self.recipe.kl_weight(self.iter, getattr(getattr(self.model, 'config', None), 'dec_nums', None))
        kw = {} if weight == 1 else {'kl_weight': weight}  # the paper's update calls forward(im[, lmb]) alone
        for i, (im, lmb) in enumerate(zip(micro, lambdas)):
            im = im.to(self.device, non_blocking=True)
            last = i == len(micro) - 1
            with nullcontext() if self.world == 1 or last else self.forward.no_sync():
                with autocast:
                    out = self.forward(im, **kw) if lmb is None else self.forward(im, lmb.to(self.device), **kw)
                (out['loss'] / len(micro)).backward()
            figures += torch.stack([out[k].detach().float() for k in ('loss', 'bppix', 'psnr')])
        figures /= len(micro)
        if self.world > 1:
            dist.all_reduce(figures)  # a non-finite loss on any rank reaches every rank
            figures /= self.world
        return figures

    def _count(self, non_finite, spike):
        c = self.counters
        c['bad_steps'] += non_finite
        c['spikes'] += spike
        c['bad_in_row'] = torch.where(non_finite, c['bad_in_row'] + 1, 0)
        c['longest_bad_run'] = torch.maximum(c['longest_bad_run'], c['bad_in_row'])

    # ------------------------------------------------------------------------------------------------ state
    @property
    def lr(self):
        """The LR the next update would take before a spike, a float (a host read)."""
        return float(self._lr) if self.iter % LR_PERIOD else self.recipe.held_lr(self.iter)

    def state_dict(self):
        """Plain numbers and state dicts (a host read): ``iter``, ``lr`` (held), ``lr_scale`` (its ratio to the
        schedule), ``grad_norms`` (oldest first), ``counters``, ``optimizer``, ``ema``, ``ema_step``."""
        optimizer = self.optimizer.state_dict()
        optimizer['param_groups'] = [{**g, 'lr': float(g['lr'])} for g in optimizer['param_groups']]
        held = float(self._lr)
        return {'iter': self.iter, 'lr': held, 'lr_scale': held / self.recipe.held_lr(max(self.iter - 1, 0)),
                'grad_norms': [n for n in self.norms.tolist() if n == n],
                'counters': {k: int(v) for k, v in self.counters.items()}, 'optimizer': optimizer,
                'ema': self.ema.module.state_dict() if self.ema is not None else None,
                'ema_step': self.iter if self.ema is not None else None}

    def load_state_dict(self, state):
        """Continue from :meth:`state_dict` (or a ``last.pt`` holding its keys). A checkpoint without ``lr`` (from
        an earlier trainer, whose spike cuts lasted the whole run) takes the schedule's held LR."""
        self.optimizer.load_state_dict(state['optimizer'])
        for group in self.optimizer.param_groups:
            group.update(lr=self._lr, fused=True, foreach=None)
        self.iter = int(state['iter'])
        self._lr.fill_(state.get('lr') or self.recipe.held_lr(max(self.iter - 1, 0)))
        norms = list(state.get('grad_norms', []))[-SPIKE_WINDOW:]
        self.norms.fill_(float('nan'))
        if norms:
            self.norms[SPIKE_WINDOW - len(norms):] = torch.tensor(norms, dtype=self.norms.dtype)
        for k in COUNTERS:
            self.counters[k].fill_(state.get('counters', {}).get(k, 0))
        if self.ema is not None and state.get('ema') is not None:
            self.ema.module.load_state_dict(state['ema'])
