"""Anchor R-D curves for any image folder through CompressAI's codec wrappers (``compressai.utils.bench``); the
command is ``python -m lvae.anchors`` (:mod:`lvae.anchors.__main__`).

JPEG and WebP run everywhere (Pillow); VTM, BPG, JPEG2000 (ffmpeg) and others need their binaries and take
the codec's own options after ``--``. The JSON written is readable by ``python -m lvae.bdrate --anchor``,
``eval-var-rate.py --anchor`` and ``python -m compressai.utils.plot``.

Command line::

    python -m lvae.anchors FOLDER --codec jpeg [--qualities 10,20,...] [--output ANCHOR.json]
    python -m lvae.anchors FOLDER --codec vtm -- --build-dir VTM/bin --config encoder_intra_vtm.cfg --rgb

bpp = file bits / pixel count and PSNR in RGB (8-bit) per image, averaged over images, per quality; the
per-image figures are kept, so ``python -m lvae.bdrate`` gives the anchor's BD-rates a bootstrap interval too.
The JSON names the images (file, size, sha256), never the machine's paths.
Images that are not usable (:func:`lvae.data.check_images`) stop the run unless ``--skip-invalid``.
"""
import argparse
import os
import warnings

import numpy as np
from tqdm.auto import tqdm

with warnings.catch_warnings():  # compressai's import-time torch.jit.script deprecation notice
    warnings.simplefilter('ignore', FutureWarning)
    from compressai.utils.bench import codecs as bench


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
