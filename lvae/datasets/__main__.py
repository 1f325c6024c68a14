"""``python -m lvae.datasets download NAME ... [--root DIR]``: download and verify test sets;
``python -m lvae.datasets list``: the known datasets and where they resolve (:mod:`lvae.data.downloads`)."""
import sys

from lvae.cli import FlagParser
from lvae.data.downloads import DOWNLOADS, DownloadError, download_dataset
from lvae.data.paths import dataset_path, how_to_set_paths, known_datasets


def main(argv=None):
    parser = FlagParser(prog='python -m lvae.datasets',
                        description="Download the paper's test sets, or list where datasets resolve.")
    sub = parser.add_subparsers(dest='command', required=True)
    d = sub.add_parser('download', help='download and verify test sets')
    d.add_argument('names', nargs='+', choices=sorted(DOWNLOADS), metavar='NAME', help=', '.join(DOWNLOADS))
    d.add_argument('--root', default=None, help='download to ROOT/NAME (default: where lvae.data.paths looks)')
    sub.add_parser('list', help='known datasets and where they resolve')
    args = parser.parse_args(argv)
    if args.command == 'list':
        for name, what in known_datasets.items():
            try:
                where = dataset_path(name)
            except (FileNotFoundError, ValueError):
                where = f'missing (expected at {dataset_path(name, must_exist=False)})'
            print(f'{name:18s} {what}\n{"":18s} -> {where}')
        print(how_to_set_paths())
        return 0
    status = 0
    for name in args.names:
        try:
            print(f'{name}: {download_dataset(name, args.root)} ({DOWNLOADS[name]["count"]} images, verified)')
        except (DownloadError, ValueError, OSError) as e:
            print(f'error: {e}', file=sys.stderr)
            status = 1
    return status


if __name__ == '__main__':
    sys.exit(main())
