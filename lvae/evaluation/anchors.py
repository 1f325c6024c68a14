"""Anchor curves: the R-D curves shipped with the package (``anchors.json`` beside this file, with their sources),
a source's true R(D) (:mod:`lvae.sources`), and R-D curves read from JSON files.

Shipped: VTM 18.0 (``vtm-18.0``, the paper's reference), the authors' codecs (``qarv_base``, ``qres34m``) and the
previous R(D) bound, Yang & Mandt 2022 (``yang-mandt-2022``).
"""
import json
import os

import numpy as np

from lvae.evaluation.choices import DEFAULT_ANCHOR, TRUE_RD
from lvae.evaluation.results import dataset_curves, per_image_figures
from lvae.sources import find_source, true_curve

ANCHORS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'anchors.json')


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
    or None), ``files`` (the per-image rows' file names, or None), ``hashes`` (the sha256 of each row's file where
    the result records it, else None in its place), ``intervals`` (the file's bootstrap settings, or None) and
    ``num_images`` (the images its curve is of, where it says)."""
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
    files = [row.get('file') for row in data['per_image']] if per_image is not None else None
    recorded = data.get('dataset', {}).get('files') if isinstance(data.get('dataset'), dict) else None
    by_name = {f.get('file'): f.get('sha256') for f in recorded if isinstance(f, dict)} \
        if isinstance(recorded, list) else {}
    return {'name': data.get('name') or os.path.splitext(os.path.basename(path))[0],
            'dataset': data.get('test-set') or data.get('dataset_name'), 'curve': curve, 'per_image': per_image,
            'files': files, 'hashes': [by_name.get(f) for f in files] if files is not None else None,
            'intervals': data.get('intervals') if isinstance(data.get('intervals'), dict) else None,
            'num_images': data.get('num_images') if isinstance(data.get('num_images'), int) else None}


def rows_against_curve(read, path):
    """Warnings (strings) where the per-image rows of a :func:`read_curve` result are not what its curve is of:
    fewer rows than the images it counts, or rows whose means are another curve. The interval is the rows'."""
    if read['per_image'] is None:
        return []
    rows, warnings = len(read['per_image'][0]), []
    if read['num_images'] is not None and rows < read['num_images']:
        warnings.append(f'{path} holds per-image rows for {rows} of the {read["num_images"]} images of its curve: '
                        f'the interval is of those {rows}')
    means = dataset_curves(*read['per_image'])
    for key, close in (('bpp', dict(rtol=1e-3, atol=0)), ('psnr', dict(rtol=0, atol=5e-3))):
        mine, stated = np.asarray(means[key], float), np.asarray(read['curve'][key], float)
        if mine.shape != stated.shape or not np.allclose(mine, stated, **close):
            worst = np.max(np.abs(mine - stated)) if mine.shape == stated.shape else None
            warnings.append(f'{path}: the means of its per-image rows are not its curve (results.{key}'
                            + (f', up to {worst:.4g} apart' if worst is not None else ', another number of points')
                            + '): the BD-rate is of the curve, the interval of the rows')
    return warnings


def _numbers(path, key, values, length=None):
    """``values`` as a list of finite numbers (of ``length``), or a ValueError naming the file and the field."""
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               and np.isfinite(v) for v in values):
        raise ValueError(f'{path}: results.{key} must be a list of finite numbers (one per point), got '
                         f'{json.dumps(values)[:80]}')
    if length is not None and len(values) != length:
        raise ValueError(f'{path}: results.{key} has {len(values)} values but results.bpp has {length}')
    return values


def same_images(a, b):
    """Whether two :func:`read_curve` results hold figures of the same images in the same order: the same file
    names and, where both record it, the same content (sha256). Returns ``(same, why_not)``."""
    if a['files'] is None or b['files'] is None:
        return False, 'one of them has no per-image figures'
    if a['files'] != b['files']:
        return False, f'the image lists differ: {len(a["files"])} and {len(b["files"])} files, ' \
                      f'{len(set(a["files"]) ^ set(b["files"]))} names in one only'
    differ = [f for f, x, y in zip(a['files'], a['hashes'], b['hashes']) if x and y and x != y]
    if differ:
        return False, (f'{len(differ)} of their {len(a["files"])} files have the same name but other content '
                       f'(sha256), e.g. {differ[0]}')
    return True, ''


def default_anchor(dataset):
    """The BD-rate reference of test set ``dataset`` (a name): the true R(D) for a source (:mod:`lvae.sources`),
    else VTM 18.0."""
    return TRUE_RD if find_source(dataset) is not None else DEFAULT_ANCHOR


def resolve_anchor_curve(anchor, dataset, missing_ok=False, test_psnr=None):
    """``anchor``: a shipped codec name, :data:`TRUE_RD` (the true R(D) of a source ``dataset`` over the PSNRs
    of ``test_psnr``) or an R-D JSON path -> ``(label, curve dict)`` with every PSNR convention the anchor has;
    ``None`` when there is no such curve for ``dataset`` and ``missing_ok``."""
    if anchor == TRUE_RD:
        if find_source(dataset) is not None and test_psnr is not None:
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
