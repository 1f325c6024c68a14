"""``python -m lvae.datasets``: download the paper's test sets (the library is :mod:`lvae.data.downloads`)."""
from lvae.data.downloads import SOURCES, DownloadError, download, find_or_download, source_url, verify

__all__ = ['SOURCES', 'DownloadError', 'download', 'find_or_download', 'source_url', 'verify']
