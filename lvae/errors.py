"""Exceptions summed up in one line, for error messages and warnings that name their cause."""
import os
import shutil


def first_line(error):
    """The first line of ``str(error)``, stripped ('' when the message is empty)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ''


def write_failure(error, folder):
    """What stopped a write into ``folder``, in words (torch's own message says only 'file write failed')."""
    above = folder
    while not os.path.exists(above) and os.path.dirname(above) != above:
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        return f'{above} is a file, not a folder'
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    try:
        free = f'{shutil.disk_usage(above).free / 2**20:.1f} MiB free on its file system'
    except OSError:
        free = 'free space unknown'
    return f'the write failed ({free}: a full disk?)'
