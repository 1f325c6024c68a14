"""BD-rate and BD-PSNR: Bjontegaard's average differences between two R-D curves.

The paper's BD-rate is Bjontegaard's: a cubic polynomial fit of log-rate over PSNR for each curve, integrated
over the PSNR interval both curves cover (``method='cubic'``); ``'pchip'`` is the piecewise-cubic variant. Both
come from the ``bjontegaard`` package. Rates in any unit (bpp), PSNR in dB.
"""
import warnings

import numpy as np

METHODS = ('cubic', 'pchip')
MIN_POINTS = 4  # points a curve needs for the cubic fit of BD-rate


def _curve(bpp, psnr, what):
    bpp, psnr = np.asarray(bpp, dtype=np.float64), np.asarray(psnr, dtype=np.float64)
    if bpp.shape != psnr.shape or bpp.ndim != 1 or len(bpp) < MIN_POINTS:
        raise ValueError(f'{what} curve needs matching bpp and psnr lists of at least {MIN_POINTS} points, '
                         f'got {bpp.shape} and {psnr.shape}')
    if not (np.isfinite(bpp).all() and np.isfinite(psnr).all() and (bpp > 0).all()):
        raise ValueError(f'{what} curve has non-finite or non-positive values')
    order = np.argsort(bpp)
    return bpp[order], psnr[order]


def _bd(name, anchor_bpp, anchor_psnr, test_bpp, test_psnr, method):
    """``bjontegaard.<name>`` of the two curves. The package is imported here, at the first BD figure: it imports
    matplotlib.pyplot and takes over a second, which ``import lvae`` should not cost."""
    import bjontegaard
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    ra, da = _curve(anchor_bpp, anchor_psnr, 'anchor')
    rt, dt = _curve(test_bpp, test_psnr, 'test')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # partial overlap is reported by overlap(), not as a warning
        return float(getattr(bjontegaard, name)(ra, da, rt, dt, method=method, require_matching_points=False,
                                                min_overlap=0))


def bd_rate(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method='cubic'):
    """Average bit-rate difference of the test curve w.r.t. the anchor at equal PSNR, in percent
    (negative: the test curve needs fewer bits). NaN when the PSNR ranges do not overlap."""
    return _bd('bd_rate', anchor_bpp, anchor_psnr, test_bpp, test_psnr, method)


def bd_psnr(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method='cubic'):
    """Average PSNR difference (dB) of the test curve w.r.t. the anchor at equal bit-rate. NaN when the
    bit-rate ranges do not overlap (an extrapolated number would mean nothing)."""
    if overlap(anchor_bpp, test_bpp) == 0:
        return float('nan')
    return _bd('bd_psnr', anchor_bpp, anchor_psnr, test_bpp, test_psnr, method)


def overlap(anchor_psnr, test_psnr):
    """Fraction of the joint range covered by both curves (PSNR: the BD-rate integration interval; given
    bit-rates, the BD-PSNR one)."""
    a, t = np.asarray(anchor_psnr), np.asarray(test_psnr)
    lo, hi = max(a.min(), t.min()), min(a.max(), t.max())
    return max(hi - lo, 0.0) / (max(a.max(), t.max()) - min(a.min(), t.min()))
