"""Dataset path resolution (lvae.data.paths)."""
import json
import os

import pytest

from lvae.data import paths


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.setenv('LVAE_DATASETS', str(tmp_path / 'root'))
    monkeypatch.setenv('LVAE_CONFIG', str(tmp_path / 'datasets.json'))
    monkeypatch.setattr(paths, 'SHARED_DATASETS', str(tmp_path / 'shared' / 'datasets'))
    return tmp_path


def test_search_order_folder_config_root_shared(clean_env):
    tmp = clean_env
    with pytest.raises(FileNotFoundError, match='lvae.datasets download kodak'):
        paths.dataset_path('kodak')
    assert paths.dataset_path('kodak', must_exist=False) == str(tmp / 'root' / 'kodak')
    (tmp / 'shared' / 'datasets' / 'kodak').mkdir(parents=True)
    assert paths.dataset_path('kodak') == str(tmp / 'shared' / 'datasets' / 'kodak')  # last resort
    (tmp / 'root' / 'kodak').mkdir(parents=True)
    assert paths.dataset_path('kodak') == str(tmp / 'root' / 'kodak')
    (tmp / 'mine').mkdir()
    (tmp / 'datasets.json').write_text(json.dumps({'kodak': str(tmp / 'mine')}))
    assert paths.dataset_path('kodak') == str(tmp / 'mine')
    assert paths.dataset_path(str(tmp / 'mine')) == str(tmp / 'mine')  # a folder is used as it is


def test_unknown_names_and_bad_config_are_explained(clean_env):
    with pytest.raises(ValueError, match='known datasets: kodak, tecnick-rgb-1200') as info:
        paths.dataset_path('kodac')
    assert 'LVAE_DATASETS' in str(info.value)
    (clean_env / 'datasets.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match='must be a JSON object'):
        paths.dataset_path('kodak')


def test_dataset_name_of_a_folder():
    assert paths.dataset_name('kodak') == 'kodak'
    assert paths.dataset_name(os.path.join('..', 'shared', 'datasets', 'kodak') + os.sep) == 'kodak'
    assert paths.dataset_name('/data/my-photos') is None


def test_the_shared_folder_of_this_checkout_is_found(kodak_dir, monkeypatch):
    monkeypatch.setenv('LVAE_DATASETS', '/nonexistent-root')
    monkeypatch.setenv('LVAE_CONFIG', '/nonexistent-config.json')
    assert os.path.samefile(paths.dataset_path('kodak'), kodak_dir)
