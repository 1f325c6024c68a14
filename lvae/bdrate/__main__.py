"""``python -m lvae.bdrate RESULT.json [--anchor vtm-18.0 | yang-mandt-2022 | true-rd | ANCHOR.json] [--dataset NAME]``:
BD-rate and BD-PSNR of a result against an anchor, in both PSNR conventions, with a 95% bootstrap interval when
the result has per-image figures; a result on a source (:mod:`lvae.sources`) is compared with the source's true
R(D) by default, point by point too. A refined result compared with its plain one: ``--anchor PLAIN.json`` (an
anchor result of the same images is resampled with the result: the interval is that of the difference)."""
import os
import sys

from lvae.cli import FlagParser
from lvae.evaluation.anchors import DEFAULT_ANCHOR, TRUE_RD, default_anchor, list_anchors, read_curve, \
    resolve_anchor_curve, rows_against_curve, same_images
from lvae.evaluation.intervals import bootstrap
from lvae.evaluation.report import comparison
from lvae.sources import find_source


def main(argv=None):
    parser = FlagParser(prog='python -m lvae.bdrate', description=__doc__.split('\n\n')[0].split(': ', 1)[1])
    parser.add_argument('result', help="R-D curve JSON (from eval-var-rate.py, or the authors' layout)")
    parser.add_argument('--anchor', default=None,
                        help=f"shipped codec ({', '.join(list_anchors())}), {TRUE_RD} (a source's exact R(D)) or "
                             f'anchor JSON path (default: {TRUE_RD} for a source, else {DEFAULT_ANCHOR})')
    parser.add_argument('--dataset', default=None, help="dataset of the shipped anchor (default: the JSON's "
                                                          "'test-set' / 'dataset_name')")
    args = parser.parse_args(argv)
    try:
        read = read_curve(args.result)
        dataset = args.dataset or read['dataset']
        anchor = args.anchor or default_anchor(dataset)
        if dataset is None and not os.path.isfile(anchor):
            raise ValueError(f'{args.result} names no dataset; pass --dataset NAME')
        test_psnr = read['curve']['psnr'] + read['curve'].get('psnr_of_mean_mse', [])  # as eval-var-rate.py
        refs = {os.path.basename(anchor): resolve_anchor_curve(anchor, dataset, test_psnr=test_psnr)}
        intervals = None
        for warning in rows_against_curve(read, args.result):
            print(f'warning: {warning}', file=sys.stderr)
        if read['per_image'] is not None:
            settings = {key: read['intervals'][key] for key in ('resamples', 'seed', 'level')
                        if read['intervals'] and key in read['intervals']}
            source = find_source(dataset) if anchor == TRUE_RD else None
            other = read_curve(anchor) if os.path.isfile(anchor) else None
            same, why_not = same_images(read, other) if other and other['per_image'] is not None else (False, '')
            paired = {os.path.basename(anchor): other['per_image']} if same else {}
            if why_not:
                print(f'note: {args.result} and {anchor} hold figures of different images ({why_not}): the interval '
                      f"is that of {read['name']} alone, against the anchor's curve held fixed")
            intervals = bootstrap(*read['per_image'], truth=source.rate_bpp if source is not None else None,
                                  anchors={k: curve for k, (_, curve) in refs.items() if k not in paired},
                                  paired=paired, **settings)
        print(comparison(read['curve'], refs, intervals, len(read['per_image'][0]) if intervals else None,
                         name=read['name'], dataset=dataset or ''))
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
