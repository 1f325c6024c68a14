"""R-D plots (PNG): the bound against anchor codecs, BD-rate in the legend. Figures are drawn on their own
Agg canvas, so importing this module leaves matplotlib's global backend (and pyplot's state) alone."""
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lvae.evaluation.bdrate import MIN_POINTS, bd_rate
from lvae.evaluation.outputs import PLOT_SOFTWARE
from lvae.evaluation.results import atomic_path


def plot_rd(path, curves, reference=None, title='', psnr_label='PSNR (RGB, dB)'):
    """Write an R-D plot (PSNR in dB over bpp) as a PNG to ``path`` (written to a temporary file, then renamed;
    its 'Software' text says an evaluation drew it, :func:`lvae.evaluation.outputs.drawn_by_lvae`).

    curves: list of ``(label, bpp, psnr)``, drawn with markers; reference: ``(label, bpp, psnr)`` of the
    anchor (e.g. VTM 18.0), drawn dashed; each curve's legend entry then gives its BD-rate (cubic, the
    paper's) w.r.t. it, or 'no PSNR overlap'; psnr_label: the PSNR axis' label (its convention).
    """
    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if reference is not None:
        ref_label, ref_bpp, ref_psnr = reference
        ax.plot(ref_bpp, ref_psnr, 'k--', linewidth=1.5, label=ref_label)
    for label, bpp, psnr in curves:
        if reference is not None:
            bd = bd_rate(ref_bpp, ref_psnr, bpp, psnr) if len(bpp) >= MIN_POINTS else math.nan
            label += f' (BD-rate vs {ref_label}: {bd:+.2f}%)' if math.isfinite(bd) else ' (BD-rate n/a)'
        ax.plot(bpp, psnr, marker='.', linewidth=1.5, label=label)
    ax.set_xlabel('bits per pixel')
    ax.set_ylabel(psnr_label)
    ax.set_title(title)
    ax.grid(True, alpha=0.4)
    ax.legend(loc='lower right', fontsize=8)
    return save_figure(fig, path, software=PLOT_SOFTWARE)


def save_figure(fig, path, software=None):
    """Lay out the matplotlib ``fig`` and write it to ``path`` as a PNG (a temporary file, then renamed), with
    ``software`` as its 'Software' text when given; returns ``path``."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format='png', **({'metadata': {'Software': software}} if software else {}))
    return path
