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
from lvae.evaluation.results import CONVENTIONS, convention_psnr, psnr

METHOD = 'percentile bootstrap over images'
LEVEL, RESAMPLES, SEED = 0.95, 2000, 0
CHUNK = 2 ** 22  # resample x image counts held at once (32 MiB): the memory does not grow with images x resamples


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


def bootstrap(bpp, img_psnr, mse, anchors=None, resamples=RESAMPLES, seed=SEED, level=LEVEL, truth=None,
              paired=None):
    """Intervals of the curve points and BD-rates from per-image figures, each an (N, L) array.

    anchors: ``{key: curve}`` with curve a dict ``{'bpp', 'psnr', ...}``; truth: a source's R(D), bpp as a function
    of the MSE on [0, 1] (an array in, an array out), e.g. ``GaussianField.rate_bpp``; paired: ``{key: (bpp, psnr,
    mse)}``, the per-image figures ((N, L') arrays, the same N images in the same order) of anchors that are
    evaluations of the same images, e.g. a plain result beside its refined one: each resample takes the same images
    from both, so the interval is that of the difference between the two, not of the test alone. Returns a dict:
    ``method``, ``level``, ``resamples``, ``seed``; per-point ``[low, high]`` lists under ``bpp``, ``psnr``,
    ``psnr_of_mean_mse`` and, with ``truth``, ``excess`` (of the mean bpp over the truth at the mean MSE, bpp, the
    two taken from the same resample); ``bd_rate``: ``{key: {convention: [low, high] or None}}`` (None: BD-rate
    undefined, e.g. under ``MIN_POINTS`` points); ``paired``: the keys resampled with the test, when any.
    """
    n = len(bpp)
    if n < 1 or resamples < 1:
        raise ValueError(f'need at least one image and one resample, got {n} images, {resamples} resamples')
    for key, figures in (paired or {}).items():
        if len(figures[0]) != n:
            raise ValueError(f'{key}: a paired anchor needs figures of the same {n} images, got {len(figures[0])}')
    sets = [(bpp, img_psnr, mse), *(paired or {}).values()]
    means = _resampled_means([np.asarray(f, dtype=np.float64) for figures in sets for f in figures], resamples, seed)
    boot, *anchor_curves = [_curves(*means[3 * i:3 * i + 3]) for i in range(len(sets))]
    out = {'method': METHOD, 'level': level, 'resamples': int(resamples), 'seed': int(seed)}
    out.update({key: _band(boot[key], level) for key in ('bpp', *CONVENTIONS)})
    if truth is not None:
        out['excess'] = _band(boot['bpp'] - truth(means[2]), level)
    out['bd_rate'] = {key: {conv: _band(bd_rates(boot['bpp'], boot[conv], anchor, conv), level)
                            for conv in CONVENTIONS} for key, anchor in (anchors or {}).items()}
    for key, anchor in zip(paired or {}, anchor_curves):
        out['bd_rate'][key] = {conv: _band(paired_bd_rates(boot, anchor, conv), level) for conv in CONVENTIONS}
    if paired:
        out['paired'] = sorted(paired)
    return out


def _resampled_means(figures, resamples, seed):
    """The mean over the images of each resample of each of ``figures`` ((N, L) arrays): (resamples, L) arrays.
    Resample ``r`` takes the images of row ``r`` of ``default_rng(seed).integers(0, N, (resamples, N))``, drawn a
    chunk of rows at a time (the same draws) and applied as counts per image, so no (resamples, N, L) array exists."""
    n = len(figures[0])
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK // n)
    out = [[] for _ in figures]
    for start in range(0, int(resamples), rows):
        r = min(rows, int(resamples) - start)
        picks = rng.integers(0, n, size=(r, n)) + n * np.arange(r)[:, None]
        counts = np.bincount(picks.ravel(), minlength=r * n).reshape(r, n).astype(np.float64)
        for acc, f in zip(out, figures):
            acc.append(counts @ f / n)
    return [np.concatenate(acc) for acc in out]


def _curves(bpp, img_psnr, mse):
    """A dataset curve per resample from the resampled means: ``bpp``, ``psnr``, ``psnr_of_mean_mse``."""
    return {'bpp': bpp, 'psnr': img_psnr, 'psnr_of_mean_mse': psnr(mse)}


def paired_bd_rates(test, anchor, convention):
    """BD-rate (%, cubic) of each resample's test curve w.r.t. the same resample's anchor curve (both
    curves of :func:`_curves`); NaN where undefined."""
    if min(np.shape(test['bpp'])[-1], np.shape(anchor['bpp'])[-1]) < MIN_POINTS:
        return np.full(len(test['bpp']), np.nan)
    return np.array([bd_rate(ab, ap, b, p) for b, p, ab, ap in
                     zip(test['bpp'], test[convention], anchor['bpp'], anchor[convention])])


def draw_bd_rates(draws, anchor):
    """BD-rate of each posterior draw's dataset curve (``draws``: ``{'bpp', 'psnr', 'psnr_of_mean_mse'}``,
    K x L lists) -> ``{convention: [K values]}``: the spread of the estimate with the images held fixed."""
    return {conv: bd_rates(np.asarray(draws['bpp']), np.asarray(draws[conv]), anchor, conv).tolist()
            for conv in CONVENTIONS}


def describe(intervals, images):
    """One line saying what an interval of :func:`bootstrap` is."""
    paired = ''.join(f'; paired: {key} resampled with the same images' for key in intervals.get('paired', []))
    return (f'{intervals["level"]:.0%} interval, {intervals["method"]} ({images} images, '
            f'{intervals["resamples"]} resamples, seed {intervals["seed"]}){paired}: it covers which images were '
            f'drawn, not the choice of curve fit (compare the cubic and pchip rows)')
