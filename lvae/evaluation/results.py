"""The result JSON of a bound evaluation: dataset curves from per-image figures in both PSNR conventions,
what a result records about its inputs (names and hashes, never the machine's paths), and atomic writing.

PSNR conventions of a dataset curve, per lambda:

- ``psnr``: the mean over images of each image's PSNR (the paper's, the authors' and CompressAI's);
- ``psnr_of_mean_mse``: the PSNR of the mean over images of each image's MSE (common in the literature;
  never higher than ``psnr``, by Jensen's inequality).
"""
import contextlib
import json
import os
import tempfile

import numpy as np

from lvae.checkpoint import is_url, sha256_file
from lvae.errors import write_failure

CONVENTIONS = {'psnr': 'mean of per-image PSNR (paper)', 'psnr_of_mean_mse': 'PSNR of mean MSE'}


def psnr(mse):
    """PSNR in dB of MSE on the [0, 1] scale (array in, array out)."""
    return -10 * np.log10(np.maximum(mse, 1e-20))


def dataset_curves(bpp, img_psnr, mse):
    """Per-image figures (..., N, L) for N images and L lambdas -> dict of (..., L) arrays: ``bpp`` (mean),
    ``psnr`` (mean of per-image PSNR) and ``psnr_of_mean_mse``. ``mse`` on the [0, 1] scale."""
    return {'bpp': np.mean(bpp, axis=-2), 'psnr': np.mean(img_psnr, axis=-2),
            'psnr_of_mean_mse': psnr(np.mean(mse, axis=-2))}


def convention_psnr(curve, convention):
    """The PSNR list of ``curve`` (a dict with ``bpp``, ``psnr``, ...) in ``convention``, or None when it has no
    figures for it. A mean MSE on the 0-255 scale (``mse_255``, as Yang & Mandt publish it) gives the PSNR of
    the mean MSE."""
    if convention not in CONVENTIONS:
        raise ValueError(f'PSNR convention must be one of {tuple(CONVENTIONS)}, got {convention!r}')
    if curve.get(convention) is not None:
        return list(curve[convention])
    if convention == 'psnr_of_mean_mse' and curve.get('mse_255') is not None:
        return (10 * np.log10(255.0 ** 2 / np.asarray(curve['mse_255'], dtype=np.float64))).tolist()
    return None


def per_image_figures(data):
    """``(bpp, psnr, mse)``, three (N, L) float64 arrays, from a result's ``per_image`` list, or None when it has
    none. A result without per-image MSE (a codec's, one draw per image) gets it from the per-image PSNR;
    a multi-draw result without it has no per-image figures (its mean PSNR is not one draw's)."""
    rows = data.get('per_image') if isinstance(data, dict) else None
    if not rows or not all(isinstance(r, dict) and 'bpp' in r and 'psnr' in r for r in rows):
        return None
    if any('mse' not in r for r in rows) and (data.get('samples') or 1) > 1:
        return None
    lengths = {len(r[key]) if isinstance(r[key], list) else -1 for r in rows for key in ('bpp', 'psnr', 'mse')
               if key in r}
    if len(lengths) != 1 or -1 in lengths:
        raise ValueError(f'per_image figures must be lists of one length (one number per lambda), got lengths '
                         f'{sorted(lengths)} (-1: not a list)')
    try:
        bpp, img_psnr = (np.array([r[key] for r in rows], dtype=np.float64) for key in ('bpp', 'psnr'))
        mse = np.array([r['mse'] if 'mse' in r else 10 ** (-np.asarray(r['psnr']) / 10) for r in rows],
                       dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f'per_image figures are not numbers: {e}') from None
    for key, values in (('bpp', bpp), ('psnr', img_psnr), ('mse', mse)):
        bad = np.argwhere(~np.isfinite(values))
        if len(bad):
            i, j = bad[0]
            raise ValueError(f"per_image[{i}] ({rows[i].get('file', 'no file name')}) has a non-finite {key} at point "
                             f"{j} ({values[i, j]}){f' and {len(bad) - 1} more' if len(bad) > 1 else ''}")
    return bpp, img_psnr, mse


def mean_objective(result):
    """Per lambda (L,), the objective that training and refinement minimise, at a bound result's points, the mean
    over its images: the rate in nats per dimension (bpp x ln 2 / 3) plus lambda times the MSE in the [-1, 1] scale
    (4 x the [0, 1] MSE). Needs per-image figures with bpp per original pixel (the default ``bpp_pixels``)."""
    figures = per_image_figures(result)
    if figures is None or result.get('bpp_pixels', 'original') != 'original':
        raise ValueError('the objective needs per-image figures with bpp per original pixel, got '
                         f"{'none' if figures is None else 'bpp_pixels ' + repr(result['bpp_pixels'])}")
    bpp, _, mse = figures
    return (bpp * np.log(2) / 3 + np.asarray(result['lambdas'], dtype=np.float64) * 4 * mse).mean(0)


def dataset_record(name, paths):
    """What was evaluated, without the machine's paths: ``{'name', 'files': [{'file', 'bytes', 'sha256'}]}``."""
    return {'name': name, 'files': [{'file': os.path.basename(p), 'bytes': os.path.getsize(p),
                                     'sha256': sha256_file(p)} for p in paths]}


def weights_label(source):
    """A checkpoint's URL as given, a local file by its name only (its sha256 identifies it)."""
    return source if source is None or is_url(source) else os.path.basename(os.fspath(source))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` to write to; renamed to ``path`` when the block succeeds,
    removed when it fails: a crash or kill never leaves a torn file at ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_writable(path):
    """Raise OSError naming ``path`` unless a file can be written there: ``path`` is not a folder, its folder exists
    (or is made) and takes a new file. For checking an output before the work that fills it, not after."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f'{path} is a folder; give a file name, e.g. {os.path.join(path, "result.json")}')
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
    except OSError as e:
        raise OSError(f'cannot write {path}: {write_failure(e, folder)}') from None
    os.close(fd)
    os.remove(tmp)


def json_text(data):
    """``data`` as indented JSON text; NaN and infinity are refused with a ValueError naming where they are."""
    try:
        return json.dumps(data, indent=1, allow_nan=False)
    except ValueError:
        raise ValueError(f'the result holds NaN or infinity at {", ".join(_non_finite(data)[:4])}: a result that '
                         f'holds them is a failed one; nothing is written') from None


def _non_finite(data, where=''):
    """The paths (``results.bpp[3]``) of the non-finite numbers in ``data``."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _non_finite(v, f'{where}.{k}' if where else str(k))]
    if isinstance(data, (list, tuple)):
        return [p for i, v in enumerate(data) for p in _non_finite(v, f'{where}[{i}]')]
    return [where] if isinstance(data, float) and not np.isfinite(data) else []


def save_json(path, data):
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`atomic_path`). NaN and infinity are refused
    (ValueError, naming where) before anything is written: a result that holds them is a failed one, never a file."""
    text = json_text(data)
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        f.write(text)
    return path
