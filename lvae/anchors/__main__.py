"""``python -m lvae.anchors FOLDER --codec jpeg [--qualities 10,20,...] [--output ANCHOR.json]``: an anchor R-D curve
for any image folder through CompressAI's codec wrappers (:mod:`lvae.evaluation.codecs`); codecs that need their
binaries (VTM, BPG, ...) take their own options after ``--``."""
import os
import sys

from lvae.cli import FlagParser
from lvae.data import check_images, dataset_name, dataset_path, list_images
from lvae.evaluation.codecs import CODECS, DEFAULT_QUALITIES, anchor_curve, make_codec
from lvae.evaluation.results import dataset_record, save_json


def parse_qualities(text):
    """``--qualities '10,20,30'`` -> [10, 20, 30]; a ValueError naming the flag and the bad value."""
    try:
        return [int(q) for q in text.split(',') if q.strip()]
    except ValueError:
        bad = next(q for q in text.split(',') if q.strip() and not q.strip().lstrip('-').isdigit())
        raise ValueError(f'--qualities takes comma-separated integers (e.g. 10,20,30), got {bad.strip()!r} in '
                         f'{text!r}') from None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    codec_args = argv[argv.index('--') + 1:] if '--' in argv else []
    argv = argv[:argv.index('--')] if '--' in argv else argv
    parser = FlagParser(prog='python -m lvae.anchors', description=__doc__.split('\n\n')[0].split(': ', 1)[1])
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
        qualities = parse_qualities(args.qualities) if args.qualities else DEFAULT_QUALITIES.get(args.codec)
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
