"""How far evaluation results are from a reference run of the same model and images (e.g. bf16 or TF32 vs
strict fp32): per image and lambda, the bpp difference in percent and the PSNR difference in dB, and the
BD-rate of each curve against the reference's. Prints a markdown table.

    python benchmarks/compare_results.py results/fp32.json results/bf16.json [more.json ...] [--json OUT]
"""
import json

import numpy as np

import benchlib  # noqa: F401  (puts the repository on sys.path)
from lvae.bdrate import bd_rate
from lvae.cli import FlagParser


def per_image(path):
    """-> (file names, bpp (images, lambdas), psnr (images, lambdas), dataset bpp, dataset psnr, seconds)."""
    with open(path) as f:
        r = json.load(f)
    files = [im['file'] for im in r['per_image']]
    bpp = np.array([im['bpp'] for im in r['per_image']])
    psnr = np.array([im['psnr'] for im in r['per_image']])
    return files, bpp, psnr, r['results']['bpp'], r['results']['psnr'], r.get('seconds')


def compare(reference, other):
    files, bpp, psnr, dbpp, dpsnr, _ = per_image(reference)
    files2, bpp2, psnr2, dbpp2, dpsnr2, seconds = per_image(other)
    if files != files2 or bpp.shape != bpp2.shape:
        raise SystemExit(f'error: {other} covers other images or lambdas than {reference}')
    rel = 100 * (bpp2 / bpp - 1)
    dp = psnr2 - psnr
    return {'result': other, 'max_abs_bpp_pct': float(np.abs(rel).max()), 'mean_bpp_pct': float(rel.mean()),
            'max_abs_psnr_db': float(np.abs(dp).max()), 'mean_psnr_db': float(dp.mean()),
            'bd_rate_pct': bd_rate(dbpp, dpsnr, dbpp2, dpsnr2), 'seconds': seconds}


def main():
    p = FlagParser(description=__doc__.split('\n\n')[0])
    p.add_argument('reference')
    p.add_argument('others', nargs='+')
    p.add_argument('--json', default=None, help='also write the rows here')
    args = p.parse_args()
    rows = [compare(args.reference, o) for o in args.others]
    print(f'Against {args.reference} (per image and lambda):\n')
    print(benchlib.markdown_table(rows, [
        ('result', 'result', 's'), ('max_abs_bpp_pct', 'max abs d bpp (%)', '.3f'),
        ('mean_bpp_pct', 'mean d bpp (%)', '+.3f'), ('max_abs_psnr_db', 'max abs d PSNR (dB)', '.4f'),
        ('mean_psnr_db', 'mean d PSNR (dB)', '+.4f'), ('bd_rate_pct', 'BD-rate (%)', '+.3f'),
        ('seconds', 'seconds', '.1f')]))
    if args.json:
        benchlib.write_json(args.json, {'reference': args.reference, 'rows': rows})


if __name__ == '__main__':
    main()
