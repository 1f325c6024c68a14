"""Helpers shared by the command-line scripts: flags in either spelling, safe parsing of ``--model_args``."""
import argparse
import ast

from lvae.models.rd.model import RDConfig


def parse_model_args(text):
    """``"lmb_range=(4,2048), smooth_mean=False"`` -> dict of config overrides.

    Every key must be an :class:`RDConfig` field and every value a Python literal (number, string, tuple,
    list, bool, None); nothing is evaluated: the text is parsed with :mod:`ast`. Raises ValueError with a
    message naming the offending part.
    """
    if not text or not text.strip():
        return {}
    try:
        call = ast.parse(f'_({text})', mode='eval').body
    except SyntaxError as e:
        raise ValueError(f'--model_args {text!r} is not a list of KEY=VALUE literals ({e.msg}); '
                         f'example: "lmb_range=(16,1024)"') from None
    if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f'--model_args {text!r}: expected comma-separated KEY=VALUE pairs, e.g. '
                         f'"lmb_range=(16,1024)"')
    fields = RDConfig.__dataclass_fields__
    out = {}
    for kw in call.keywords:
        if kw.arg not in fields:
            raise ValueError(f'--model_args: unknown config field {kw.arg!r}; known: {", ".join(fields)}')
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f'--model_args: the value of {kw.arg} must be a Python literal (number, string, '
                             f'tuple, list, bool), got {ast.unparse(kw.value)!r}') from None
    return out


class FlagParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose long flags answer to both spellings, ``--bpp-pixels`` and ``--bpp_pixels``;
    ``--help`` shows each flag once, as it was declared."""

    def parse_known_args(self, args=None, namespace=None):
        import sys
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
