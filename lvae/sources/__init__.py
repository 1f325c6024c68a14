"""Image sources whose R(D) is known exactly, to check a bound against the truth.

>>> from lvae.sources import get_source
>>> src = get_source('gaussian-64')
>>> x = src.sample(8)                   # (8, 3, 64, 64) float32 in [0, 1]
>>> src.rate_bpp(10 ** (-30 / 10))      # the true R(D) at 30 dB, bits per pixel

A source name works wherever a dataset name does in ``train-var-rate.py`` (``--trainset``: fresh samples;
``--valset``) and ``eval-var-rate.py`` (``--dataset_name``: the fixed held-out sample, against the truth).
``python -m lvae.sources NAME`` prints the true R(D) at a few PSNRs.
"""
from lvae.sources.gaussian import GaussianField
from lvae.sources.optimal import OptimalChannel
from lvae.sources.registry import (find_source, get_source, is_source, list_sources, register_source, resolve,
                                   source_record)
from lvae.sources import fields  # noqa: F401  (registers gaussian-64 and its optimal channel)
from lvae.sources.truth import excess, excess_table, true_curve

__all__ = ['GaussianField', 'OptimalChannel', 'excess', 'excess_table', 'find_source', 'get_source', 'is_source',
           'list_sources', 'register_source', 'resolve', 'source_record', 'true_curve']
