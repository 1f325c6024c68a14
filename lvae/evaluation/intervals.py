"""95% intervals of a bound estimate: a percentile bootstrap over images.

The images are the sample. Each resample draws N of the N images with replacement and recomputes, from their
per-image figures, the dataset curve (bpp and both PSNR conventions, :mod:`lvae.evaluation.results`) and its BD-rate
(cubic, the paper's) against each anchor; an interval is the 2.5th to 97.5th percentile over the resamples.
The seed and the number of resamples are fixed and recorded: the same figures give the same interval.

Posterior draws (``samples`` K > 1): each image's figures are the means over its K draws, so resampling the
images resamples their draw noise too, and the interval includes it; a separate draw term added on top would
count it twice. The draw spread alone, images held fixed (what a rerun with another seed moves), is the
spread of the per-draw curves: ``bpp_std`` / ``psnr_std`` per point and :func:`draw_bd_rates`.
"""
import numpy as np

from lvae.evaluation.bdrate import MIN_POINTS, bd_rate
from lvae.evaluation.results import CONVENTIONS, convention_psnr, dataset_curves

METHOD = 'percentile bootstrap over images'
LEVEL, RESAMPLES, SEED = 0.95, 2000, 0


def _band(values, level):
    """[low, high] percentile interval of the finite values along axis 0 (None when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).any():
        return None
    q = 50 * (1 - level), 50 * (1 + level)
    return np.nanpercentile(values, q, axis=0).T.tolist()


def bd_rates(test_bpp, test_psnr, anchor, convention):
    """BD-rate (%, cubic) of each test curve (rows of (R, L) arrays) w.r.t. ``anchor`` in ``convention``
    (the anchor's published PSNR when it has none in that convention); NaN where undefined."""
    anchor_psnr = convention_psnr(anchor, convention) or anchor['psnr']
    if np.shape(test_bpp)[-1] < MIN_POINTS:
        return np.full(len(test_bpp), np.nan)
    return np.array([bd_rate(anchor['bpp'], anchor_psnr, b, p) for b, p in zip(test_bpp, test_psnr)])


def bootstrap(bpp, img_psnr, mse, anchors=None, resamples=RESAMPLES, seed=SEED, level=LEVEL):
    """Intervals of the curve points and BD-rates from per-image figures, each an (N, L) array.

    anchors: ``{key: curve}`` with curve a dict ``{'bpp', 'psnr', ...}``. Returns a dict: ``method``, ``level``,
    ``resamples``, ``seed``; per-point ``[low, high]`` lists under ``bpp``, ``psnr``, ``psnr_of_mean_mse``;
    ``bd_rate``: ``{key: {convention: [low, high] or None}}`` (None: BD-rate undefined, e.g. under
    ``MIN_POINTS`` points).
    """
    n = len(bpp)
    if n < 1 or resamples < 1:
        raise ValueError(f'need at least one image and one resample, got {n} images, {resamples} resamples')
    picks = np.random.default_rng(seed).integers(0, n, size=(int(resamples), n))
    boot = dataset_curves(np.asarray(bpp)[picks], np.asarray(img_psnr)[picks], np.asarray(mse)[picks])
    out = {'method': METHOD, 'level': level, 'resamples': int(resamples), 'seed': int(seed)}
    out.update({key: _band(boot[key], level) for key in ('bpp', *CONVENTIONS)})
    out['bd_rate'] = {key: {conv: _band(bd_rates(boot['bpp'], boot[conv], anchor, conv), level)
                            for conv in CONVENTIONS} for key, anchor in (anchors or {}).items()}
    return out


def draw_bd_rates(draws, anchor):
    """BD-rate of each posterior draw's dataset curve (``draws``: ``{'bpp', 'psnr', 'psnr_of_mean_mse'}``,
    K x L lists) -> ``{convention: [K values]}``: the spread of the estimate with the images held fixed."""
    return {conv: bd_rates(np.asarray(draws['bpp']), np.asarray(draws[conv]), anchor, conv).tolist()
            for conv in CONVENTIONS}


def describe(intervals, images):
    """One line saying what an interval of :func:`bootstrap` is."""
    return (f'{intervals["level"]:.0%} interval, {intervals["method"]} ({images} images, '
            f'{intervals["resamples"]} resamples, seed {intervals["seed"]})')
