"""``python -m lvae.datasets``: download the paper's test sets (the library is :mod:`lvae.data.downloads`)."""
from lvae.data.downloads import DOWNLOADS, DownloadError, download_dataset, find_or_download, source_url, verify

__all__ = ['DOWNLOADS', 'DownloadError', 'download_dataset', 'find_or_download', 'source_url', 'verify']
