"""Command lines: :class:`FlagParser`, whose flags answer to both spellings, for the scripts and every
``python -m lvae.*`` command; :func:`interruptible`, which turns Ctrl-C and SIGTERM into one exception that the
command answers with one line and ``128 + signal``."""
import argparse
import contextlib
import signal
import sys


class UsageError(ValueError):
    """A bad flag value: reported as one line, exit status 2."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived inside :func:`interruptible`. A BaseException, like KeyboardInterrupt, so
    that no ``except Exception`` swallows it, and every ``finally`` on the way (temporary files) runs."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def interruptible():
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` (their handlers are restored after it)."""
    def handle(signum, frame):
        raise Interrupted(signum)
    saved = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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
