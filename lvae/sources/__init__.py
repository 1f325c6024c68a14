"""Image sources whose R(D) is known exactly, to check a bound against the truth.

>>> from lvae.sources import get_source
>>> src = get_source('gaussian-64')
>>> x = src.sample(8)                   # (8, 3, 64, 64) float32 in [0, 1]
>>> src.rate_bpp(10 ** (-30 / 10))      # the true R(D) at 30 dB, bits per pixel

A source name works wherever a dataset name does in ``train-var-rate.py`` (``--trainset``: fresh samples;
``--valset``) and ``eval-var-rate.py`` (``--dataset_name``: the fixed held-out sample, against the truth).
``python -m lvae.sources NAME`` prints the true R(D) at a few PSNRs.
"""
from lvae.data import dataset_path, find_or_download
from lvae.sources.gaussian import GaussianField
from lvae.sources.optimal import OptimalChannel, register_optimal_channel

SOURCES = {}


def register_source(source):
    """Make ``source`` (e.g. a :class:`GaussianField`, or :func:`lvae.sources.fit.fit_field`'s result) known by
    its name, and its optimal channel a model, ``<name>-optimal`` (:mod:`lvae.sources.optimal`)."""
    SOURCES[source.name] = source
    register_optimal_channel(source)
    return source


def list_sources():
    return sorted(SOURCES)


def find_source(name):
    """The registered source called ``name`` (a GaussianField), or None when ``name`` is not a source's name."""
    return SOURCES.get(name) if isinstance(name, str) else None


def is_source(name):
    return find_source(name) is not None


def get_source(name):
    """The registered source ``name`` (:func:`list_sources`); a source given itself is returned as it is."""
    source = name if isinstance(name, GaussianField) else find_source(name)
    if source is None:
        raise ValueError(f'unknown source {name!r}; known: {", ".join(list_sources())}')
    return source


def resolve(name, download=False, progress=True):
    """A dataset argument -> a source (a registered source's name) or a folder (:func:`lvae.data.dataset_path`; a
    known test set missing on this machine is downloaded first when ``download``). An unknown name is a
    ValueError that lists the known datasets and the sources."""
    source = find_source(name)
    if source is not None:
        return source
    try:
        return find_or_download(name, progress=progress) if download else dataset_path(name)
    except ValueError as e:
        raise ValueError(f'{e}; or a source with a known R(D): {", ".join(list_sources())}') from None


def source_record(name):
    """What an evaluation on source ``name`` records as its dataset (the results JSON's ``dataset``)."""
    src = get_source(name)
    return {'name': name, 'source': src.describe(), 'held_out_images': src.held_out_images,
            'held_out_seed': src.held_out_seed}


# The photographs' colour axes and spectral shape at a contrast that stays inside [0, 1]: the parameters that
# `python -m lvae.sources fit ../shared/datasets/photos` prints (the project's 49 training photographs).
register_source(GaussianField(
    name='gaussian-64', size=64, mean=[0.4347, 0.4217, 0.4074],
    basis=[[0.555877, 0.736688, 0.385086], [0.582777, -0.015032, -0.812493], [0.592765, -0.676066, 0.437681]],
    std=[0.123474, 0.046384, 0.017656], alpha=[2.458, 2.9745, 2.6321],
    origin='fit to the 49 training photographs (3136 crops of 64x64, seed 0), contrast scaled to a largest '
           'per-channel std of 0.08'))

from lvae.sources.truth import excess, excess_table, true_curve  # noqa: E402 (they use the registry above)

__all__ = ['GaussianField', 'OptimalChannel', 'excess', 'excess_table', 'find_source', 'get_source', 'is_source',
           'list_sources', 'register_source', 'resolve', 'source_record', 'true_curve']
