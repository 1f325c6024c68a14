"""Shared fixtures.

``tests/fixtures`` travels with every clone: the tiny conformance vector made with the authors' implementation
(a copy of ``shared/spec/rd_conformance_tiny.pt``) and the awkward image files (``odd/``: 16-bit, RGBA,
palette, tiny, truncated, not an image). ``shared_dir`` is the project's ``../shared`` folder (the larger spec
files, Kodak, the training photos, the anchors' source files): tests that need it are skipped with a message
on a user's clone, and fail in CI (CI=true), where it must exist.
"""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, 'tests', 'fixtures')
SHARED = os.environ.get('LVAE_SHARED', os.path.join(os.path.dirname(REPO), 'shared'))


@pytest.fixture(scope='session')
def shared_dir():
    if not os.path.isdir(SHARED):
        if os.environ.get('CI'):
            pytest.fail(f'CI must have the shared folder beside the clone, but {SHARED} is missing')
        pytest.skip(f'needs the project\'s shared folder at {SHARED} (spec, datasets, anchors); a user clone '
                    f'does not have it: set LVAE_SHARED to run these tests')
    return SHARED


@pytest.fixture(scope='session')
def kodak_dir(shared_dir):
    return os.path.join(shared_dir, 'datasets', 'kodak')


@pytest.fixture(scope='session')
def odd_dir():
    return os.path.join(DATA, 'odd')


def load_script(name):
    """A script of the repository (``eval-var-rate``, ``train-var-rate``) as a module: its main(argv) runs it in
    this process."""
    spec = importlib.util.spec_from_file_location(name.replace('-', '_'), os.path.join(REPO, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def repo_script():
    return load_script


@pytest.fixture(scope='session')
def eval_script():
    return load_script('eval-var-rate')
