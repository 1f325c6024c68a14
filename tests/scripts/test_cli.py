"""lvae.cli.FlagParser: every long flag answers to both spellings and is shown once in --help."""
import contextlib
import io

import pytest

from lvae.cli import FlagParser


def parser():
    p = FlagParser(prog='x')
    p.add_argument('--bpp-pixels', default='original')
    p.add_argument('--batch_size', type=int, default=1)
    p.add_argument('--no-progress', action='store_true')
    return p


@pytest.mark.parametrize('argv', [['--bpp-pixels', 'padded', '--batch_size', '4', '--no-progress'],
                                  ['--bpp_pixels', 'padded', '--batch-size', '4', '--no_progress'],
                                  ['--bpp_pixels=padded', '--batch-size=4', '--no_progress']])
def test_both_spellings_parse_alike(argv):
    args = parser().parse_args(argv)
    assert (args.bpp_pixels, args.batch_size, args.no_progress) == ('padded', 4, True)


def test_help_shows_each_flag_once_and_unknown_flags_are_still_refused():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser().parse_args(['--help'])
    text = out.getvalue()
    assert text.count('--bpp-pixels') == 2 and '--bpp_pixels' not in text   # usage line and the flag's line
    assert text.count('--batch_size') == 2 and '--batch-size' not in text
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parser().parse_args(['--batch_sizes', '3'])
