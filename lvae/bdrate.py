"""BD-rate and BD-PSNR against anchor codecs, and the anchor curves shipped with the package.

The paper's BD-rate is Bjontegaard's: a cubic polynomial fit of log-rate over PSNR for each curve,
integrated over the PSNR interval both curves cover (``method='cubic'``); ``'pchip'`` is the
piecewise-cubic variant. Both come from the ``bjontegaard`` package.

Command line::

    python -m lvae.bdrate RESULT.json [--anchor vtm-18.0 | ANCHOR.json] [--dataset NAME]
"""
import argparse
import json
import os
import sys
import warnings

import bjontegaard
import numpy as np

ANCHORS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'anchors.json')
DEFAULT_ANCHOR = 'vtm-18.0'
METHODS = ('cubic', 'pchip')


def _curve(bpp, psnr, what):
    bpp, psnr = np.asarray(bpp, dtype=np.float64), np.asarray(psnr, dtype=np.float64)
    if bpp.shape != psnr.shape or bpp.ndim != 1 or len(bpp) < 4:
        raise ValueError(f'{what} curve needs matching bpp and psnr lists of at least 4 points, '
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
        return json.load(f)['curves']


def list_anchors():
    """{codec: [datasets]} of the curves shipped with the package."""
    return {codec: sorted(curves) for codec, curves in _anchor_data().items()}


def get_anchor(dataset, codec=DEFAULT_ANCHOR):
    """The shipped curve ``{'bpp': [...], 'psnr': [...]}`` of ``codec`` on ``dataset``, or None."""
    return _anchor_data().get(codec, {}).get(dataset)


def read_curve(path):
    """Read an R-D JSON: ours, the authors' / CompressAI layout (``results: {bpp, psnr}``) or a plain
    ``{bpp, psnr}``. Returns ``(name, dataset or None, bpp, psnr)``."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'cannot read R-D curve {path}: {e}') from e
    results = data.get('results', data) if isinstance(data, dict) else None
    if not isinstance(results, dict) or 'bpp' not in results or 'psnr' not in results:
        raise ValueError(f"{path} holds no R-D curve (expected 'bpp' and 'psnr' lists, at the top level or "
                         f"under 'results')")
    name = data.get('name') or os.path.splitext(os.path.basename(path))[0]
    dataset = data.get('test-set') or data.get('dataset_name')
    return name, dataset, results['bpp'], results['psnr']


def bd_table(test_bpp, test_psnr, anchor_bpp, anchor_psnr, name='test', anchor_name='anchor', dataset=''):
    """A markdown table of BD-rate and BD-PSNR with both interpolation methods."""
    where = f' on {dataset}' if dataset else ''
    lines = [f'BD metrics of {name} w.r.t. {anchor_name}{where} '
             f'(PSNR overlap {overlap(anchor_psnr, test_psnr):.0%}):', '',
             '| method | BD-rate (%) | BD-PSNR (dB) |', '|---|---:|---:|']
    for method in METHODS:
        label = 'cubic (paper)' if method == 'cubic' else method
        rate = bd_rate(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method)
        psnr = bd_psnr(anchor_bpp, anchor_psnr, test_bpp, test_psnr, method)
        lines.append(f'| {label} | {_fmt(rate, "+.2f")} | {_fmt(psnr, "+.3f")} |')
    if overlap(anchor_psnr, test_psnr) == 0:
        lines += ['', 'n/a: the curves share no PSNR range, so BD-rate is undefined (an untrained model?)']
    return '\n'.join(lines)


def _fmt(value, spec):
    return format(value, spec) if np.isfinite(value) else 'n/a'


def resolve_anchor(anchor, dataset, missing_ok=False):
    """``anchor``: a shipped codec name or an R-D JSON path -> ``(label, bpp, psnr)``; ``None`` when the codec
    has no curve for ``dataset`` and ``missing_ok``."""
    if os.path.isfile(anchor):
        name, _, bpp, psnr = read_curve(anchor)
        return name, bpp, psnr
    shipped = list_anchors()
    if anchor not in shipped:
        raise ValueError(f'anchor {anchor!r} is neither a file nor a shipped codec ({", ".join(shipped)})')
    curve = get_anchor(dataset, anchor)
    if curve is None:
        if missing_ok:
            return None
        raise ValueError(f'no {anchor} curve for dataset {dataset!r}; shipped: {", ".join(shipped[anchor])}; '
                         f'pass --anchor ANCHOR.json for another dataset')
    return anchor.upper() if anchor.startswith('vtm') else anchor, curve['bpp'], curve['psnr']


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m lvae.bdrate', description=__doc__.split('\n\n')[0])
    parser.add_argument('result', help='R-D curve JSON (from eval-var-rate.py, or the authors\' layout)')
    parser.add_argument('--anchor', default=DEFAULT_ANCHOR, help='shipped codec name or anchor JSON path')
    parser.add_argument('--dataset', default=None, help="dataset of the shipped anchor (default: the JSON's "
                                                          "'test-set' / 'dataset_name')")
    args = parser.parse_args(argv)
    try:
        name, dataset, bpp, psnr = read_curve(args.result)
        dataset = args.dataset or dataset
        if dataset is None and not os.path.isfile(args.anchor):
            raise ValueError(f'{args.result} names no dataset; pass --dataset NAME')
        anchor_name, abpp, apsnr = resolve_anchor(args.anchor, dataset)
        print(bd_table(bpp, psnr, abpp, apsnr, name=name, anchor_name=anchor_name, dataset=dataset or ''))
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
