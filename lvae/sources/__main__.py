"""``python -m lvae.sources NAME``: a source's true R(D) at a few PSNRs; ``python -m lvae.sources fit FOLDER``: the
Gaussian field fit to a folder of images."""
import sys

import numpy as np

from lvae.sources import get_source, list_sources
from lvae.cli import FlagParser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ['fit']:
        p = FlagParser(prog='python -m lvae.sources fit', description=__doc__)
        p.add_argument('folder', help='image folder or known dataset name')
        p.add_argument('--size', type=int, default=64, help='field size in pixels (default: 64)')
        p.add_argument('--max_std', type=float, default=0.08,
                       help='largest per-channel std after scaling (default: 0.08)')
        args = p.parse_args(argv[1:])
        from lvae.sources.fit import fit_field
        try:
            if args.size < 8:
                raise ValueError(f'--size must be at least 8 pixels, got {args.size}')
            if not 0 < args.max_std <= 0.5:
                raise ValueError(f'--max_std must be in (0, 0.5] (a standard deviation of [0, 1] pixels), got '
                                 f'{args.max_std}')
            field = fit_field(args.folder, size=args.size, max_std=args.max_std)
        except (ValueError, OSError) as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        print(field.describe())
        print(f'GaussianField(name={field.name!r}, size={field.size}, mean={field.mean}, basis={field.basis}, '
              f'std={field.std}, alpha={field.alpha})')
        return 0
    p = FlagParser(prog='python -m lvae.sources', description=__doc__)
    p.add_argument('name', help=f'a source: {", ".join(list_sources())}, or `fit FOLDER`')
    p.add_argument('--psnr', type=float, nargs='+', default=[25, 30, 35, 40, 45], help='PSNRs in dB')
    args = p.parse_args(argv)
    try:
        src = get_source(args.name)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    lam = src.eigenvalues()
    print(src.describe())
    print(f'{len(lam)} eigenvalues from {lam.min():.3e} to {lam.max():.3e}; per-dimension variance {lam.mean():.3e} '
          f'({10 * np.log10(1 / lam.mean()):.2f} dB at zero rate); P(a draw leaves [0, 1]) <= '
          f'{src.outside_probability():.1e}\n')
    print('| PSNR (dB) | MSE ([0, 1]) | R(D) (bits per pixel) | bits per dimension | dimensions coded |')
    print('|---:|---:|---:|---:|---:|')
    for psnr in args.psnr:
        mse = 10 ** (-psnr / 10)
        theta = src.water_level(mse)
        bpp = src.rate_bpp(mse)
        print(f'| {psnr:.1f} | {mse:.3e} | {bpp:.4f} | {bpp / 3:.4f} | {int((lam > theta).sum())} of {len(lam)} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
