"""The registry of sources: a source is known by its name, wherever a dataset name is taken (:func:`resolve`), and its
optimal channel is a model, ``<name>-optimal`` (:func:`register_source`)."""
from lvae.data import dataset_path, find_or_download
from lvae.sources.gaussian import GaussianField
from lvae.sources.optimal import register_optimal_channel

SOURCES = {}  # name -> source


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
