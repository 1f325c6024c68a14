"""Fetching files over http(s): :func:`fetch` (the one place lvae downloads a file: torch's ``download_url_to_file``,
a temporary file renamed when complete, a one-line error), and checkpoints fetched once into torch's hub cache
(:func:`download`). Test sets are fetched through :func:`fetch` too (:mod:`lvae.data.downloads`)."""
import hashlib
import os
from urllib.error import URLError
from urllib.parse import urlparse

import torch


def is_url(source):
    return isinstance(source, str) and urlparse(source).scheme in ('http', 'https')


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


class DownloadError(RuntimeError):
    """A download failed or its result is not what was expected; the message says what and where."""


def fetch(url, dst, sha256=None, progress=True):
    """Download ``url`` to the file ``dst`` (a temporary file beside it, renamed when complete), checking its
    ``sha256`` (a prefix is enough) when given; :class:`DownloadError` naming the URL when it fails."""
    try:
        torch.hub.download_url_to_file(url, dst, hash_prefix=sha256, progress=progress)
    except (URLError, OSError) as e:
        raise DownloadError(f'could not download {url}: {e}') from None
    except RuntimeError as e:  # torch's hash mismatch
        raise DownloadError(f'{url}: {e}') from None


def download(url, sha256=None, progress=True):
    """Download ``url`` once into ``<torch hub dir>/checkpoints/`` and return the local path.

    ``sha256``, when given, is checked (a prefix is enough); a failed check deletes nothing cached.
    """
    cache_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    os.makedirs(cache_dir, exist_ok=True)
    filename = os.path.basename(urlparse(url).path) or 'checkpoint.pt'
    path = os.path.join(cache_dir, filename)
    if not os.path.exists(path):
        try:
            fetch(url, path, sha256, progress)
        except DownloadError as e:
            raise DownloadError(f'{e}. Without network, download the file elsewhere and pass its local path '
                                f'instead.') from None
    elif sha256 and not sha256_file(path).startswith(sha256):
        raise DownloadError(f'cached file {path} does not match the expected sha256 {sha256}; delete it to '
                           f'download again')
    return path
