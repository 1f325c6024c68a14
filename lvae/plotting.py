"""R-D plots (PNG, matplotlib's Agg backend): the bound against anchor codecs, BD-rate in the legend."""
import math
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from lvae.bdrate import bd_rate  # noqa: E402


def plot_rd(path, curves, reference=None, title=''):
    """Write an R-D plot (PSNR in dB over bpp) to ``path``.

    curves: list of ``(label, bpp, psnr)``, drawn with markers; reference: ``(label, bpp, psnr)`` of the
    anchor (e.g. VTM 18.0), drawn dashed; each curve's legend entry then gives its BD-rate (cubic, the
    paper's) w.r.t. it, or 'no PSNR overlap'.
    """
    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    if reference is not None:
        ref_label, ref_bpp, ref_psnr = reference
        ax.plot(ref_bpp, ref_psnr, 'k--', linewidth=1.5, label=ref_label)
    for label, bpp, psnr in curves:
        if reference is not None:
            bd = bd_rate(ref_bpp, ref_psnr, bpp, psnr)
            label += f' (BD-rate {bd:+.2f}%)' if math.isfinite(bd) else ' (BD-rate: no PSNR overlap)'
        ax.plot(bpp, psnr, marker='.', linewidth=1.5, label=label)
    ax.set_xlabel('bits per pixel')
    ax.set_ylabel('PSNR (RGB, dB)')
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
