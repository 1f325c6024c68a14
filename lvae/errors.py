"""Exceptions summed up in one line, for error messages and warnings that name their cause."""


def first_line(error):
    """The first line of ``str(error)``, stripped ('' when the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ''
