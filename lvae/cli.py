"""Command lines: :class:`FlagParser`, whose flags answer to both spellings, for the scripts and every
``python -m lvae.*`` command."""
import argparse
import sys


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose long flags answer to both spellings, ``--bpp-pixels`` and ``--bpp_pixels``;
    ``--help`` shows each flag once, as it was declared."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args([self._declared(a) for a in args], namespace)

    def _declared(self, arg):
        """``arg`` with its flag name in the declared spelling, when only the other spelling is declared."""
        if not arg.startswith('--') or arg == '--':
            return arg
        name, sep, value = arg.partition('=')
        if name in self._option_string_actions:
            return arg
        for other in (name[:2] + name[2:].replace('-', '_'), name[:2] + name[2:].replace('_', '-')):
            if other in self._option_string_actions:
                return other + sep + value
        return arg
