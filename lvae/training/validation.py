"""Validation during training: the bound on the validation images at a few lambdas, its BD-rate against the
set's anchor curve, best.pt, the R-D plot and ``validations.jsonl`` (rank 0).

``validations.jsonl`` is the record of the run's validations, a line each, written last: a validation stopped
midway leaves no line and is run again when the run continues. Each line names its validation set (:func:`set_id`):
best.pt is chosen among the validations of one set only, never by comparing figures of different sets.
"""
import hashlib
import json
import math
import os
import time
import warnings

import numpy as np
from tqdm import tqdm

from lvae.evaluation.bdrate import MIN_POINTS, bd_rate
from lvae.checkpoint import save_checkpoint
from lvae.errors import first_line
from lvae.evaluation import evaluate_bound, lambda_grid
from lvae.evaluation.plotting import plot_rd
from lvae.evaluation.results import CONVENTIONS
from lvae.evaluation.stages import stage_lines, stage_rates
from lvae.training.runs import checkpoint_dict, header

VALIDATIONS_FILE = 'validations.jsonl'
STAGE_LAMBDAS = (4.0, 64.0, 1024.0)  # where each validation measures the rate of every decoder stage
STAGE_IMAGES = 4  # on the first images of the validation set


def validate(model, images, steps, reference=None, convention='psnr', device=None, amp='none'):
    """Bound evaluation on ``images`` (a :class:`~lvae.evaluation.TestSet`, or what resolves into one) at ``steps``
    lambdas. Returns a dict of scalars
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


def set_id(what, steps):
    """A short digest of a validation set: ``what`` (a JSON-able description of its images) and its lambda count."""
    return hashlib.sha256(json.dumps([what, steps], sort_keys=True).encode()).hexdigest()[:12]


def ranking(metrics):
    """How a validation ranks (lower is better): a finite BD-rate beats any validation without one, then the
    lower BD-rate; without one, the lower loss."""
    bd = metrics.get('val/bd_rate')
    return (0, bd) if bd is not None and math.isfinite(bd) else (1, metrics['val/loss'])


class ValidationRecord:
    """A run's ``validations.jsonl`` as seen by validation set ``set_id``: which iterations it validated, its best
    so far, and which set chose the best.pt now in the folder. ``legacy_best``: the ranking of best.pt in a run
    whose lines name no set (written before they did), when its validation flags are unchanged."""

    def __init__(self, folder, set_id, legacy_best=None):
        self.path, self.set_id = os.path.join(folder, VALIDATIONS_FILE), set_id
        self.lines = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for text in f:
                    try:
                        self.lines.append(json.loads(text))
                    except ValueError:  # a line torn by a kill: that validation is redone
                        pass
        mine = [line for line in self.lines if line.get('validation') == set_id]
        named = any('validation' in line for line in self.lines)
        self.best = min((ranking(line) for line in mine), default=None if named else legacy_best)
        chosen = [line.get('validation') for line in self.lines if line.get('best')]
        if chosen:
            self.best_file_set = chosen[-1]
        elif legacy_best is not None:
            self.best_file_set = set_id
        else:  # a best.pt of lines that name no set, or of no line at all: of an earlier set, as far as we know
            self.best_file_set = 'earlier' if os.path.exists(os.path.join(folder, 'best.pt')) else None

    def done(self, iteration):
        """Whether this set's validation of ``iteration`` finished."""
        return any(line.get('iter') == iteration and line.get('validation') == self.set_id for line in self.lines)

    def better(self, key):
        """Whether a validation ranked ``key`` beats this set's best so far (recorded if so)."""
        if self.best is None or tuple(key) < tuple(self.best):
            self.best = tuple(key)
            return True
        return False

    def append(self, line):
        line = {**line, 'validation': self.set_id}
        with open(self.path, 'a') as f:
            f.write(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None
                                for k, v in line.items()}) + '\n')
        self.lines.append(line)


def run_validation(folder, settings, trainer, run, val, device, stop):
    """Rank 0 validates the EMA weights (the model's without EMA): abandoned at once (StopRequested) when ``stop``
    (:class:`~lvae.training.signals.StopSignals`) is asked for; then best.pt (within this validation set), the
    plot ``val_rd.png`` and the line of ``validations.jsonl``; logs; returns the metrics.
    ``val``: :class:`lvae.training.logs.RunLog`."""
    net = trainer.ema.module if trainer.ema is not None else trainer.model
    t0 = time.time()
    with stop.interrupting():
        metrics, res, anchor = validate(net, val.test, settings.val_steps, val.reference, val.convention, device,
                                        settings.recipe.amp)
        stages = stage_rates(net, (val.test.image(i)[1] for i in range(min(STAGE_IMAGES, len(val.test)))),
                             STAGE_LAMBDAS)
    trainer.model.train()
    record = val.record
    best = record.better(ranking(metrics))
    if best:
        path = os.path.join(folder, 'best.pt')
        if record.best_file_set not in (None, record.set_id) and os.path.exists(path):
            kept = os.path.join(folder, f'best-{record.best_file_set}.pt')
            os.replace(path, kept)
            tqdm.write(f'[iter {trainer.iter}] best.pt was chosen on another validation set: kept as {kept}; best.pt '
                       f'now follows {settings.valset}')
        with stop.shielded():
            save_checkpoint(checkpoint_dict(header(settings, trainer, run), net.state_dict(), metrics=metrics,
                                            validation=record.set_id, ema_weights=trainer.ema is not None), path)
        record.best_file_set = record.set_id
    try:
        png = plot_rd(os.path.join(folder, 'val_rd.png'), [(settings.name, res['bpp'], res[val.convention])], anchor,
                      title=f'{settings.name}: {settings.valset} at iteration {trainer.iter}',
                      psnr_label=f'PSNR (RGB, dB): {CONVENTIONS[val.convention]}')
    except (OSError, ValueError, RuntimeError) as e:  # a plot is not worth a run
        warnings.warn(f'no validation plot at iteration {trainer.iter}: {first_line(e)}', RuntimeWarning)
        png = None
    record.append({'iter': trainer.iter, **metrics, 'bpp': res['bpp'], 'psnr': res['psnr'],
                   'psnr_of_mean_mse': res['psnr_of_mean_mse'], 'best': best, 'stages': stages})
    val.log_validation(metrics, png, time.time() - t0, trainer.iter, stages)
    bd = metrics.get('val/bd_rate', float('nan'))
    tqdm.write(f'[iter {trainer.iter}] val loss {metrics["val/loss"]:.4f}  bpp {metrics["val/bpp"]:.4f}  '
               f'psnr {metrics["val/psnr"]:.3f}  bd-rate {f"{bd:+.2f}%" if math.isfinite(bd) else "n/a"}'
               f'{" vs the true R(D)" if val.truth else ""}  ({time.time() - t0:.0f}s)')
    tqdm.write(f'[iter {trainer.iter}] rate by decoder stage, coarse to fine (active units of all), on '
               f'{min(STAGE_IMAGES, len(val.test))} validation images:\n  ' + '\n  '.join(stage_lines(stages)))
    return metrics
