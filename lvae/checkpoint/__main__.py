"""``python -m lvae.checkpoint SOURCE OUTPUT``: the lean weights file of a training checkpoint (weights, model name,
config and iteration; no optimizer or RNG state), the file a user shares or ships."""
import os
import sys

from lvae.checkpoint import export_weights
from lvae.cli import FlagParser


def main(argv=None):
    parser = FlagParser(prog='python -m lvae.checkpoint',
                        description='Export the weights of a training checkpoint to a lean file.')
    parser.add_argument('source', help='a train-var-rate.py checkpoint, e.g. runs/lvae/NAME/last_ema.pt')
    parser.add_argument('output', help='the file to write')
    args = parser.parse_args(argv)
    try:
        digest = export_weights(args.source, args.output)
    except (ValueError, OSError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'{args.output}: {os.path.getsize(args.output) / 1e6:.1f} MB, sha256 {digest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
