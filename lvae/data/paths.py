"""Where datasets live, configurable without editing code.

A dataset argument is resolved in this order:
1. an existing folder path is used as it is;
2. a known name mapped in the user config file (``$LVAE_CONFIG``, default ``~/.config/lvae/datasets.json``,
   a JSON object ``{"kodak": "/data/kodak", ...}``);
3. a known name under the root ``$LVAE_DATASETS`` (``<root>/<name>``), default ``~/datasets``;
4. last resort for a known name: ``<parent of the repository checkout>/shared/datasets/<name>`` (a ``shared``
   folder beside the clone, as the project's CI lays it out).

The first of 2-4 that exists is used. ``python -m lvae.datasets download NAME`` writes to the place of 2
or 3 (``dataset_path(name, must_exist=False)``).
"""
import json
import os

# The paper's datasets: name -> what it is.
known_datasets = {
    'kodak': 'Kodak PhotoCD, 24 images of 768x512 (test)',
    'tecnick-rgb-1200': 'Tecnick SAMPLING RGB, 100 images of 1200x1200 (test)',
    'clic2022-test': 'CLIC 2022 test set, 30 images of about 2048x1365 (test)',
    'coco-train2017': 'COCO 2017 train images, 118,287 photographs (training)',
}

DEFAULT_ROOT = os.path.join('~', 'datasets')
DEFAULT_CONFIG = os.path.join('~', '.config', 'lvae', 'datasets.json')
# <parent of the checkout>/shared/datasets: lvae/data/paths.py -> lvae/data -> lvae -> checkout -> its parent.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATASETS = os.path.join(os.path.dirname(_CHECKOUT), 'shared', 'datasets')


def dataset_root():
    """The root folder holding ``<root>/<name>`` for each known dataset; a ValueError when ``$LVAE_DATASETS`` names
    something that is not a folder."""
    root = os.path.expanduser(os.environ.get('LVAE_DATASETS') or DEFAULT_ROOT)
    if os.environ.get('LVAE_DATASETS') and os.path.lexists(root) and not os.path.isdir(root):
        raise ValueError(f'LVAE_DATASETS={root} is not a folder: set it to a folder holding <root>/<name> dataset '
                         f'folders (or unset it for {DEFAULT_ROOT})')
    return root


def config_file():
    return os.path.expanduser(os.environ.get('LVAE_CONFIG') or DEFAULT_CONFIG)


def _user_mapping():
    path = config_file()
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            mapping = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'cannot read dataset config {path}: {e}') from e
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f'dataset config {path} must be a JSON object mapping names to folder paths')
    return mapping


def how_to_set_paths():
    return (f'set LVAE_DATASETS to a root holding <root>/<name> folders (now: {dataset_root()}), or map '
            f'names to folders in {config_file()} (a JSON object), or pass a folder path')


def dataset_name(name_or_folder):
    """The known dataset name of a name or folder (a folder named like a known dataset, e.g.
    ``../shared/datasets/kodak``, counts as that dataset), else None."""
    base = os.path.basename(os.path.normpath(os.fspath(name_or_folder)))
    return base if base in known_datasets else None


def dataset_path(name, must_exist=True):
    """Resolve a dataset name or folder path to a folder (see the module docstring).

    With ``must_exist=False`` a known name resolves to where it should be (config mapping or root), for
    downloads."""
    name = os.fspath(name)
    if os.path.isdir(name):
        return name
    if name not in known_datasets:
        raise ValueError(f'unknown dataset {name!r} (not a folder either); known datasets: '
                         f'{", ".join(known_datasets)}; {how_to_set_paths()}')
    mapping = _user_mapping()
    path = os.path.expanduser(mapping[name]) if name in mapping else os.path.join(dataset_root(), name)
    if not must_exist or os.path.isdir(path):
        return path
    shared = os.path.join(SHARED_DATASETS, name)
    if os.path.isdir(shared):
        return shared
    raise FileNotFoundError(f'dataset {name!r} is not at {path} (nor at {shared}); download it with '
                            f'`python -m lvae.datasets download {name}` or {how_to_set_paths()}')
