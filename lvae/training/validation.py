"""Validation during training: the bound on the validation images at a few lambdas, its BD-rate against the
set's anchor curve, best.pt and the R-D plot (rank 0)."""
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

from lvae.bdrate import MIN_POINTS, bd_rate
from lvae.checkpoint import save_checkpoint
from lvae.evaluation import evaluate_bound, lambda_grid
from lvae.plotting import plot_rd
from lvae.training.runs import header


def validate(model, images, steps, reference=None, convention='psnr', device=None, amp='none'):
    """Bound evaluation on ``images`` (paths or an image tensor) at ``steps`` lambdas. Returns a dict of scalars
    (``val/loss``: the training objective, nats per dimension + lambda * MSE in [-1, 1] scale, averaged over
    images and lambdas; ``val/bpp``, ``val/psnr``; ``val/bd_rate`` in %, the curve in PSNR ``convention``
    against ``reference(psnr) -> (label, bpp, psnr)`` where it gives one) and the
    :func:`~lvae.evaluation.evaluate_bound` result."""
    lambdas = lambda_grid(model.config.lmb_range, steps)
    res = evaluate_bound(model, images, lambdas=lambdas, device=device, skip_invalid=True, progress=False,
                         amp=None if amp == 'none' else amp)
    bpp = np.array([im['bpp'] for im in res['per_image']])      # (images, lambdas), bits per pixel
    rate = bpp * math.log(2) / 3                                  # nats per dimension
    mse = 4 * np.array([im['mse'] for im in res['per_image']])  # MSE in [-1, 1] scale (evaluation's is on [0, 1])
    metrics = {'val/loss': float((rate + np.array(lambdas) * mse).mean()),
               'val/bpp': float(np.mean(res['bpp'])), 'val/psnr': float(np.mean(res['psnr']))}
    anchor = reference(res[convention]) if reference is not None else None
    if anchor is not None and len(lambdas) >= MIN_POINTS:
        metrics['val/bd_rate'] = bd_rate(anchor[1], anchor[2], res['bpp'], res[convention])
    return metrics, res, anchor


def run_validation(folder, args, trainer, run, val, device):
    """Rank 0 validates the EMA weights (the model's without EMA), updates best.pt (a finite BD-rate beats any
    validation without one; then lower is better), ``val_rd.png`` and ``validations.jsonl`` (a line of metrics
    per validation); logs; returns the metrics. ``val``: :class:`lvae.training.logs.RunLog`."""
    net = trainer.ema.module if trainer.ema is not None else trainer.model
    t0 = time.time()
    metrics, res, anchor = validate(net, val.images, args.val_steps, val.reference, val.convention, device, args.amp)
    trainer.model.train()
    bd = metrics.get('val/bd_rate', float('nan'))
    if run.better((0, bd) if math.isfinite(bd) else (1, metrics['val/loss'])):
        save_checkpoint({**header(args, trainer, run), 'model': net.state_dict(), 'metrics': metrics,
                         'ema_weights': trainer.ema is not None}, os.path.join(folder, 'best.pt'))
    png = plot_rd(os.path.join(folder, 'val_rd.png'), [(args.name, res['bpp'], res[val.convention])], anchor,
                  title=f'{args.name}: {args.valset} at iteration {trainer.iter}')
    with open(os.path.join(folder, 'validations.jsonl'), 'a') as f:
        line = {'iter': trainer.iter, **metrics, 'bpp': res['bpp'], 'psnr': res['psnr'],
                'psnr_of_mean_mse': res['psnr_of_mean_mse']}
        f.write(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None
                            for k, v in line.items()}) + '\n')
    val.log_validation(metrics, png, time.time() - t0, trainer.iter)
    tqdm.write(f'[iter {trainer.iter}] val loss {metrics["val/loss"]:.4f}  bpp {metrics["val/bpp"]:.4f}  '
               f'psnr {metrics["val/psnr"]:.3f}  bd-rate {f"{bd:+.2f}%" if math.isfinite(bd) else "n/a"}'
               f'{" vs the true R(D)" if val.truth else ""}  ({time.time() - t0:.0f}s)')
    return metrics
