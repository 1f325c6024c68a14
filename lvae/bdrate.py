"""BD-rate and BD-PSNR against anchor codecs, and the anchor curves shipped with the package.

The paper's BD-rate is Bjontegaard's: a cubic polynomial fit of log-rate over PSNR for each curve,
integrated over the PSNR interval both curves cover (``method='cubic'``); ``'pchip'`` is the
piecewise-cubic variant. Both come from the ``bjontegaard`` package.

Shipped anchors (``lvae/data/anchors.json``, with their sources): VTM 18.0 (``vtm-18.0``, the paper's
reference), the authors' codecs (``qarv_base``, ``qres34m``) and the previous R(D) bound, Yang & Mandt 2022
(``yang-mandt-2022``).

Command line (a result with per-image figures also gets a 95% bootstrap interval, :mod:`lvae.intervals`)::

    python -m lvae.bdrate RESULT.json [--anchor vtm-18.0 | yang-mandt-2022 | true-rd | ANCHOR.json] [--dataset NAME]

A result on a source (:mod:`lvae.sources`) is compared with the source's true R(D) by default, point by point too.
"""
import json
import os
import sys
import warnings

import bjontegaard
import numpy as np

from lvae.results import CONVENTIONS, convention_psnr, dataset_curves, per_image_figures
from lvae.sources import excess_table, is_source, true_curve

ANCHORS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'anchors.json')
DEFAULT_ANCHOR = 'vtm-18.0'
TRUE_RD = 'true-rd'  # the exact R(D) of a source (lvae.sources), where the dataset is one
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


def _bd(fn, anchor_bpp, anchor_psnr, test_bpp, test_psnr, method):
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    ra, da = _curve(anchor_bpp, anchor_psnr, 'anchor')
    rt, dt = _curve(test_bpp, test_psnr, 'test')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # partial overlap is reported by overlap(), not as a warning
        return float(fn(ra, da, rt, dt, method=method, require_matching_points=False, min_overlap=0))


def bd_rate(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method='cubic'):
    """Average bit-rate difference of the test curve w.r.t. the anchor at equal PSNR, in percent
    (negative: the test curve needs fewer bits). NaN when the PSNR ranges do not overlap."""
    return _bd(bjontegaard.bd_rate, anchor_bpp, anchor_psnr, test_bpp, test_psnr, method)


def bd_psnr(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method='cubic'):
    """Average PSNR difference (dB) of the test curve w.r.t. the anchor at equal bit-rate. NaN when the
    bit-rate ranges do not overlap (an extrapolated number would mean nothing)."""
    if overlap(anchor_bpp, test_bpp) == 0:
        return float('nan')
    return _bd(bjontegaard.bd_psnr, anchor_bpp, anchor_psnr, test_bpp, test_psnr, method)


def overlap(anchor_psnr, test_psnr):
    """Fraction of the joint range covered by both curves (PSNR: the BD-rate integration interval; given
    bit-rates, the BD-PSNR one)."""
    a, t = np.asarray(anchor_psnr), np.asarray(test_psnr)
    lo, hi = max(a.min(), t.min()), min(a.max(), t.max())
    return max(hi - lo, 0.0) / (max(a.max(), t.max()) - min(a.min(), t.min()))


def _anchor_data():
    with open(ANCHORS_FILE) as f:
        return json.load(f)


def list_anchors():
    """{codec: [datasets]} of the curves shipped with the package."""
    return {codec: sorted(curves) for codec, curves in _anchor_data()['curves'].items()}


def get_anchor(dataset, codec=DEFAULT_ANCHOR):
    """The shipped curve ``{'bpp': [...], 'psnr': [...], ...}`` of ``codec`` on ``dataset``, or None."""
    return _anchor_data()['curves'].get(codec, {}).get(dataset)


def anchor_label(codec):
    """How tables and plots name a shipped codec (e.g. 'VTM-18.0')."""
    return _anchor_data()['labels'].get(codec, codec)


def read_curve(path):
    """Read an R-D JSON: ours, the authors' / CompressAI layout (``results: {bpp, psnr}``) or a plain
    ``{bpp, psnr}``. Returns a dict: ``name``, ``dataset`` (or None), ``curve`` (``bpp``, ``psnr`` and, when
    the file has them, ``psnr_of_mean_mse`` / ``mse_255``), ``per_image`` (``(bpp, psnr, mse)`` (N, L) arrays,
    or None) and ``intervals`` (the file's bootstrap settings, or None)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'cannot read R-D curve {path}: {e}') from e
    results = data.get('results', data) if isinstance(data, dict) else None
    if not isinstance(results, dict) or results.get('bpp') is None or results.get('psnr') is None:
        raise ValueError(f"{path} holds no R-D curve (expected 'bpp' and 'psnr' lists, at the top level or "
                         f"under 'results', and got {sorted(results) if isinstance(results, dict) else results!r})")
    try:
        per_image = per_image_figures(data)
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None
    curve = {key: _numbers(path, key, results[key], len(results['bpp']) if key != 'bpp' else None)
             for key in ('bpp', 'psnr', 'psnr_of_mean_mse', 'mse_255')
             if results.get(key) is not None or key in ('bpp', 'psnr')}
    if 'psnr_of_mean_mse' not in curve and per_image is not None:
        curve['psnr_of_mean_mse'] = dataset_curves(*per_image)['psnr_of_mean_mse'].tolist()
    return {'name': data.get('name') or os.path.splitext(os.path.basename(path))[0],
            'dataset': data.get('test-set') or data.get('dataset_name'), 'curve': curve, 'per_image': per_image,
            'intervals': data.get('intervals') if isinstance(data.get('intervals'), dict) else None}


def _numbers(path, key, values, length=None):
    """``values`` as a list of finite numbers (of ``length``), or a ValueError naming the file and the field."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and np.isfinite(v) for v in values):
        raise ValueError(f'{path}: results.{key} must be a list of finite numbers (one per point), got '
                         f'{json.dumps(values)[:80]}')
    if length is not None and len(values) != length:
        raise ValueError(f'{path}: results.{key} has {len(values)} values but results.bpp has {length}')
    return values


def bd_table(test, anchor, name='test', anchor_name='anchor', dataset='', interval=None, interval_note='',
             draws=None):
    """A markdown table of BD-rate and BD-PSNR of curve ``test`` w.r.t. curve ``anchor`` (dicts with ``bpp``,
    ``psnr`` and optionally ``psnr_of_mean_mse``): both PSNR conventions, both interpolation methods.

    interval: ``{convention: [low, high]}`` shown beside the cubic BD-rates, described by ``interval_note``;
    draws: ``{convention: [BD-rate of each posterior draw]}``, listed below the table.
    """
    where = f' on {dataset}' if dataset else ''
    lines = [f'BD metrics of {name} w.r.t. {anchor_name}{where} '
             f'(PSNR overlap {overlap(anchor["psnr"], test["psnr"]):.0%}):', '',
             '| PSNR | method | BD-rate (%) | BD-PSNR (dB) |', '|---|---|---:|---:|']
    enough = len(test['bpp']) >= MIN_POINTS
    notes, mixed = [], False
    for conv, conv_label in CONVENTIONS.items():
        test_psnr = convention_psnr(test, conv)
        if test_psnr is None:
            continue
        anchor_psnr = convention_psnr(anchor, conv)
        if anchor_psnr is None:
            anchor_psnr, mixed = anchor['psnr'], True
            conv_label += ' *'
        for method in METHODS:
            rate = bd_rate(anchor['bpp'], anchor_psnr, test['bpp'], test_psnr, method) if enough else np.nan
            psnr = bd_psnr(anchor['bpp'], anchor_psnr, test['bpp'], test_psnr, method) if enough else np.nan
            cell = _fmt(rate, '+.2f')
            band = (interval or {}).get(conv) if method == 'cubic' else None
            if band is not None and np.isfinite(rate):
                cell += f' [{band[0]:+.2f}, {band[1]:+.2f}]'
            lines.append(f'| {conv_label} | {"cubic (paper)" if method == "cubic" else method} | {cell} | '
                         f'{_fmt(psnr, "+.3f")} |')
    if not enough:
        notes.append(f'n/a: BD-rate needs at least {MIN_POINTS} points on the test curve, got {len(test["bpp"])} '
                     f'(evaluate at {MIN_POINTS} or more lambdas, e.g. --steps 16)')
    elif overlap(anchor['psnr'], test['psnr']) == 0:
        notes.append('n/a: the curves share no PSNR range, so BD-rate is undefined (an untrained model?)')
    if interval_note and any(band is not None for band in (interval or {}).values()):
        notes.append(f'[low, high]: {interval_note}')
    if mixed:
        notes.append(f'*: {anchor_name} is published as mean of per-image PSNR only; that curve is the anchor '
                     f'in this row too')
    for conv, values in (draws or {}).items():
        if np.isfinite(values).all():
            notes.append(f'posterior draws, images fixed ({CONVENTIONS[conv]}, cubic): '
                         + ', '.join(f'{v:+.2f}' for v in values) + f' (std {np.std(values, ddof=1):.2f})')
    return '\n'.join(lines + ([''] + notes if notes else []))


def _fmt(value, spec):
    return format(value, spec) if np.isfinite(value) else 'n/a'


def default_anchor(dataset):
    """The BD-rate reference of ``dataset``: the true R(D) for a source (:mod:`lvae.sources`), else VTM 18.0."""
    return TRUE_RD if is_source(dataset) else DEFAULT_ANCHOR


def resolve_anchor_curve(anchor, dataset, missing_ok=False, test_psnr=None):
    """``anchor``: a shipped codec name, :data:`TRUE_RD` (the true R(D) of a source ``dataset`` over the PSNRs
    of ``test_psnr``) or an R-D JSON path -> ``(label, curve dict)`` with every PSNR convention the anchor has;
    ``None`` when there is no such curve for ``dataset`` and ``missing_ok``."""
    if anchor == TRUE_RD:
        if is_source(dataset) and test_psnr is not None:
            return true_curve(dataset, test_psnr)
        if missing_ok:
            return None
        raise ValueError(f'{TRUE_RD}: {dataset!r} is not a source with a known R(D) (lvae.sources)')
    if os.path.isfile(anchor):
        read = read_curve(anchor)
        return read['name'], read['curve']
    shipped = list_anchors()
    if anchor not in shipped:
        raise ValueError(f'anchor {anchor!r} is neither a file nor a shipped codec ({", ".join(shipped)})')
    curve = get_anchor(dataset, anchor)
    if curve is None:
        if missing_ok:
            return None
        raise ValueError(f'no {anchor} curve for dataset {dataset!r}; shipped: {", ".join(shipped[anchor])}; '
                         f'pass --anchor ANCHOR.json for another dataset')
    return anchor_label(anchor), curve


def main(argv=None):
    from lvae.cli import FlagParser
    parser = FlagParser(prog='python -m lvae.bdrate', description=__doc__.split('\n\n')[0])
    parser.add_argument('result', help='R-D curve JSON (from eval-var-rate.py, or the authors\' layout)')
    parser.add_argument('--anchor', default=None,
                        help=f'shipped codec ({", ".join(list_anchors())}), {TRUE_RD} (a source\'s exact R(D)) or '
                             f'anchor JSON path (default: {TRUE_RD} for a source, else {DEFAULT_ANCHOR})')
    parser.add_argument('--dataset', default=None, help="dataset of the shipped anchor (default: the JSON's "
                                                          "'test-set' / 'dataset_name')")
    args = parser.parse_args(argv)
    try:
        read = read_curve(args.result)
        dataset = args.dataset or read['dataset']
        anchor_key = args.anchor or default_anchor(dataset)
        if dataset is None and not os.path.isfile(anchor_key):
            raise ValueError(f'{args.result} names no dataset; pass --dataset NAME')
        test_psnr = read['curve']['psnr'] + read['curve'].get('psnr_of_mean_mse', [])  # as eval-var-rate.py
        anchor_name, anchor = resolve_anchor_curve(anchor_key, dataset, test_psnr=test_psnr)
        interval, note = None, ''
        if read['per_image'] is not None:
            from lvae.intervals import bootstrap, describe  # lvae.intervals computes its BD-rates with this module
            settings = {key: read['intervals'][key] for key in ('resamples', 'seed', 'level')
                        if read['intervals'] and key in read['intervals']}
            found = bootstrap(*read['per_image'], anchors={'anchor': anchor}, **settings)
            interval, note = found['bd_rate']['anchor'], describe(found, len(read['per_image'][0]))
        print(bd_table(read['curve'], anchor, name=read['name'], anchor_name=anchor_name, dataset=dataset or '',
                       interval=interval, interval_note=note))
        if read['per_image'] is None:
            print('\nno interval: the file has no per-image figures')
        if anchor_key == TRUE_RD:
            print('\n' + excess_table(dataset, read['curve']))
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
