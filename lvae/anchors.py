"""Anchor R-D curves for any image folder through CompressAI's codec wrappers (``compressai.utils.bench``).

JPEG and WebP run everywhere (Pillow); VTM, BPG, JPEG2000 (ffmpeg) and others need their binaries and take
the codec's own options after ``--``. The JSON written is readable by ``python -m lvae.bdrate --anchor``,
``eval-var-rate.py --anchor`` and ``python -m compressai.utils.plot``.

Command line::

    python -m lvae.anchors FOLDER --codec jpeg [--qualities 10,20,...] [--output ANCHOR.json]
    python -m lvae.anchors FOLDER --codec vtm -- --build-dir VTM/bin --config encoder_intra_vtm.cfg --rgb

bpp = file bits / pixel count and PSNR in RGB (8-bit) per image, averaged over images, per quality; the
per-image figures are kept, so ``python -m lvae.bdrate`` gives the anchor's BD-rates a bootstrap interval too.
The JSON names the images (file, size, sha256), never the machine's paths.
Images that are not usable (:func:`lvae.images.check_images`) stop the run unless ``--skip-invalid``.
"""
import argparse
import os
import sys
import warnings

import numpy as np
from tqdm.auto import tqdm

with warnings.catch_warnings():  # compressai's import-time torch.jit.script deprecation notice
    warnings.simplefilter('ignore', FutureWarning)
    from compressai.utils.bench import codecs as bench

from lvae.images import check_images, list_images
from lvae.paths import dataset_name, dataset_path
from lvae.results import dataset_record, save_json
from lvae.cli import FlagParser

CODECS = {cls.__name__.lower(): cls for cls in (bench.JPEG, bench.WebP, bench.JPEG2000, bench.BPG, bench.VTM, bench.HM,
                                                 bench.AV1, bench.TFCI)}
# Quality parameters per codec: higher quality last for JPEG / WebP; QPs (lower is better) for the others.
DEFAULT_QUALITIES = {'jpeg': list(range(10, 100, 5)), 'webp': list(range(5, 100, 5)),
                     'vtm': list(range(22, 48)), 'bpg': list(range(22, 48)), 'hm': list(range(22, 48))}


def make_codec(name, codec_args=()):
    """A CompressAI codec by lower-case class name; ``codec_args`` are its own command-line options."""
    if name not in CODECS:
        raise ValueError(f'unknown codec {name!r}; CompressAI codecs: {", ".join(CODECS)}')
    parser = argparse.ArgumentParser(prog=f'python -m lvae.anchors FOLDER --codec {name} --')
    CODECS[name].setup_args(parser)
    return CODECS[name](parser.parse_args(list(codec_args)))


def anchor_curve(codec, paths, qualities, progress=True):
    """Run ``codec`` on each image at each quality -> dict of per-quality lists ``bpp``, ``psnr`` (averages
    over images) and ``per_image`` figures, sorted by bpp."""
    bpp, psnr = np.empty((len(qualities), len(paths))), np.empty((len(qualities), len(paths)))
    bar = tqdm(total=len(paths) * len(qualities), desc=codec.name, unit='img', disable=not progress)
    for i, path in enumerate(paths):
        for j, q in enumerate(qualities):
            out = codec.run(path, q, metrics=['psnr-rgb'])
            bpp[j, i], psnr[j, i] = out['bpp'], out['psnr-rgb']
            bar.update()
    bar.close()
    order = np.argsort(bpp.mean(1))
    return {'qualities': [qualities[j] for j in order], 'bpp': bpp.mean(1)[order].tolist(),
            'psnr': psnr.mean(1)[order].tolist(),
            'per_image': [{'file': os.path.basename(p), 'bpp': bpp[order, i].tolist(), 'psnr': psnr[order, i].tolist()}
                          for i, p in enumerate(paths)]}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    codec_args = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    parser = FlagParser(prog='python -m lvae.anchors', description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', help='image folder or known dataset name')
    parser.add_argument('--codec', default='jpeg', help=f'one of {", ".join(CODECS)} (default: jpeg)')
    parser.add_argument('--qualities', default=None, help='comma-separated quality / QP values')
    parser.add_argument('--output', default=None, help='anchor JSON (default: results/<codec>-<dataset>.json)')
    parser.add_argument('--skip-invalid', action='store_true', help='skip unusable image files')
    args = parser.parse_args(argv)
    try:
        folder = dataset_path(args.folder)
        paths, bad = check_images(list_images(folder))
        if bad and not args.skip_invalid:
            raise ValueError('not usable images (pass --skip-invalid to leave them out):\n  '
                             + '\n  '.join(str(e) for e in bad))
        if not paths:
            raise ValueError(f'no usable images in {folder}')
        codec = make_codec(args.codec, codec_args)
        qualities = ([int(q) for q in args.qualities.split(',') if q.strip()] if args.qualities
                     else DEFAULT_QUALITIES.get(args.codec))
        if not qualities:
            raise ValueError(f'give --qualities for codec {args.codec!r}')
        test_set = dataset_name(args.folder) or os.path.basename(os.path.normpath(folder))
        curve = anchor_curve(codec, paths, qualities)
    except (ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    out = args.output or os.path.join('results', f'{args.codec}-{test_set}.json')
    save_json(out, {'name': codec.name, 'description': codec.description, 'test-set': test_set,
                    'dataset': dataset_record(test_set, paths), 'num_images': len(paths),
                    'skipped': [{'file': os.path.basename(e.path), 'reason': e.reason} for e in bad],
                    'qualities': curve['qualities'],
                    'results': {'bpp': curve['bpp'], 'psnr': curve['psnr'], 'psnr-rgb': curve['psnr']},
                    'per_image': curve['per_image']})
    print('| quality | bpp | PSNR (dB) |\n|---:|---:|---:|')
    for q, b, p in zip(curve['qualities'], curve['bpp'], curve['psnr']):
        print(f'| {q} | {b:.4f} | {p:.3f} |')
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
