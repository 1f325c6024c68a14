"""``python -m lvae.evaluation.stages IMAGE ... [--weights W] [--lambdas ...] [--json OUT]``: each image's rate by
decoder stage and its active units, one posterior draw per image and lambda (plain, not refined)."""
import os
import sys

from lvae.cli import FlagParser
from lvae.data import ImageError, load_image
from lvae.evaluation.results import save_json
from lvae.evaluation.stages import stage_lines, stage_rates
from lvae.models import load_model


def main(argv=None):
    p = FlagParser(prog='python -m lvae.evaluation.stages', description=__doc__.split(':', 1)[1].strip())
    p.add_argument('images', nargs='+', help='image files')
    p.add_argument('--model', default=None, help='registered model name (default: the checkpoint\'s, or '
                   'rd_model_small)')
    p.add_argument('--weights', default=None, metavar='PATH_OR_URL', help='checkpoint (default: the registered '
                   'weights)')
    p.add_argument('--lambdas', type=float, nargs='+', default=[4.0, 64.0, 1024.0])
    p.add_argument('--seed', type=int, default=0, help='seed of the posterior draws')
    p.add_argument('--json', default=None, help='also write the figures here')
    args = p.parse_args(argv)
    try:
        loaded = load_model(args.model or (None if args.weights else 'rd_model_small'), weights=args.weights,
                            pretrained=None if args.weights else True)
        images = {path: load_image(path) for path in args.images}
    except (ValueError, OSError, ImageError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    out = {'model': loaded.name, 'weights': loaded.weights, 'weights_sha256': loaded.sha256, 'seed': args.seed,
           'images': []}
    for path, im in images.items():
        rates = stage_rates(loaded.model, [im], args.lambdas, seed=args.seed)
        out['images'].append({'file': os.path.basename(path), **rates})
        print(f'{path} ({im.shape[2]}x{im.shape[1]}):\n  ' + '\n  '.join(stage_lines(rates)))
    if args.json:
        save_json(args.json, out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
