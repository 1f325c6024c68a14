"""BD-rate against anchor curves, and the command ``python -m lvae.bdrate RESULT.json`` (:mod:`lvae.bdrate.__main__`).

The names users reach for in one place: the BD math (:mod:`lvae.evaluation.bdrate`), the shipped anchor curves
(:mod:`lvae.evaluation.anchors`) and the BD table (:mod:`lvae.evaluation.report`).

>>> from lvae.bdrate import bd_rate, get_anchor
>>> vtm = get_anchor('kodak')                     # VTM 18.0 on Kodak, shipped with the package
>>> bd_rate(vtm['bpp'], vtm['psnr'], bpp, psnr)   # percent; negative: fewer bits than VTM at equal PSNR
"""
from lvae.evaluation.anchors import (DEFAULT_ANCHOR, TRUE_RD, anchor_label, default_anchor, get_anchor, list_anchors,
                                     read_curve, resolve_anchor_curve)
from lvae.evaluation.bdrate import METHODS, MIN_POINTS, bd_psnr, bd_rate, overlap
from lvae.evaluation.report import bd_table

__all__ = ['DEFAULT_ANCHOR', 'METHODS', 'MIN_POINTS', 'TRUE_RD', 'anchor_label', 'bd_psnr', 'bd_rate', 'bd_table',
           'default_anchor', 'get_anchor', 'list_anchors', 'overlap', 'read_curve', 'resolve_anchor_curve']
