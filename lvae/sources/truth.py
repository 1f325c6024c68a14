"""A bound against the truth: the true R(D) of a source as an anchor curve, and each point's excess over it.

R(D) is a function of the expected distortion, so a point of a bound (mean bpp, mean MSE over images) is
compared with R at its mean MSE: the PSNR of the mean MSE, not the mean of per-image PSNRs (which Jensen's
inequality puts higher, and could put a valid bound below the truth).
"""
import numpy as np

from lvae.sources.registry import get_source


def true_curve(name, test_psnr, margin=1.0, points=17):
    """``(label, curve)``: the true R(D) of source ``name`` as an R-D curve (``bpp``, ``psnr``,
    ``psnr_of_mean_mse``) at ``points`` PSNRs spanning the range of ``test_psnr`` widened by ``margin`` dB.
    BD-rate fits a cubic to an anchor's points, so the truth is given where the test curve lies."""
    src = get_source(name)
    lo = max(min(test_psnr) - margin, src.zero_rate_psnr() + 0.05)   # below, the rate is 0: no log-rate
    hi = max(max(test_psnr) + margin, lo + margin)
    return f'true R(D) of {src.name}', src.curve(np.linspace(lo, hi, points))


def excess(name, bpp, psnr_of_mean_mse):
    """Per point: ``(true_bpp, excess_bpp, excess_percent)`` arrays, the truth at the point's mean MSE and how
    far the point's rate lies above it (bits per pixel, and % of the true rate; inf where the truth is 0)."""
    true_bpp = np.atleast_1d(get_source(name).rate_at_psnr(np.asarray(psnr_of_mean_mse, dtype=np.float64)))
    gap = np.asarray(bpp, dtype=np.float64) - true_bpp
    with np.errstate(divide='ignore', invalid='ignore'):
        percent = np.where(true_bpp > 0, 100 * gap / true_bpp, np.inf)
    return true_bpp, gap, percent


def on_the_truth(true_bpp, bpp, excess_band, within=0.01, floor=0.1):
    """Per point, whether it lies on the truth: within ``within`` (1%) of the true rate where that is at least
    ``floor`` bpp; nearer zero rate, where the sample's own MSE noise moves the truth by more, a zero excess inside
    the point's interval ``excess_band`` ([low, high] of bpp minus the truth at the mean MSE, over resamples of the
    images). What the optimal channel of a source must give (its calibration)."""
    return [abs(b - t) <= within * t if t >= floor else lo <= 0 <= hi
            for t, b, (lo, hi) in zip(true_bpp, bpp, excess_band)]


def excess_table(name, curve, excess_band=None):
    """A markdown table of each point of ``curve`` (``bpp``, ``psnr_of_mean_mse``) against the true R(D) of source
    ``name`` and a line saying where the points lie: above the truth, on it (:func:`on_the_truth`; ``excess_band``
    the 95% intervals of the excess, from :func:`lvae.evaluation.intervals.bootstrap`), or below it beyond that
    interval (a bound cannot)."""
    true_bpp, gap, percent = excess(name, curve['bpp'], curve['psnr_of_mean_mse'])
    band = excess_band or [[g, g] for g in gap]
    lines = [f'Each point against the true R(D) of {get_source(name).name} at its mean MSE:', '',
             '| bpp | PSNR of mean MSE (dB) | true R(D) (bpp) | above the truth (bpp) [95% interval] | above the '
             'truth (%) |', '|---:|---:|---:|---:|---:|']
    for b, p, t, g, (lo, hi), pc in zip(curve['bpp'], curve['psnr_of_mean_mse'], true_bpp, gap, band, percent):
        share = f'{pc:+.2f}%' if np.isfinite(pc) else 'n/a (R(D) = 0 here)'
        lines.append(f'| {b:.4f} | {p:.3f} | {t:.4f} | {g:+.4f} [{lo:+.4f}, {hi:+.4f}] | {share} |')
    below = sum(hi < 0 for lo, hi in band)
    if not (gap < 0).any():
        verdict = f'every point lies above the truth (smallest excess {gap.min():+.4f} bpp)'
    elif all(on_the_truth(true_bpp, curve['bpp'], band)):
        verdict = ('every point lies on the truth: within 1% of it where it is at least 0.1 bpp, a zero excess inside '
                   "the point's 95% interval below that")
    elif not below:
        verdict = (f'{int((gap < 0).sum())} of {len(gap)} points lie below the truth, within their 95% interval '
                   f"(the sample's noise)")
    else:
        verdict = (f'WARNING: {below} of {len(gap)} points lie BELOW the true R(D) beyond their 95% interval: a '
                   f'bound cannot; check the units (bits vs nats, the pixel count, the MSE scale) or the number of '
                   f'images')
    return '\n'.join(lines + ['', verdict])
