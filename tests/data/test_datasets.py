"""The test-set downloader against an HTTP server on 127.0.0.1 (no network), and codec anchors."""
import functools
import hashlib
import http.server
import json
import os
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from lvae.anchors.__main__ import main as anchors_main
from lvae.data import downloads as datasets, paths
from lvae.datasets.__main__ import main as datasets_main
from lvae.bdrate.__main__ import main as bdrate_main
from lvae.evaluation import as_test_set


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / 'www'`` on 127.0.0.1; yields (folder, base url)."""
    www = tmp_path / 'www'
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def png(path, w, h, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def test_download_files_checks_count_size_and_sha256(server, tmp_path, monkeypatch):
    www, url = server
    for i in range(3):
        png(www / f'kodim{i:02d}.png', 48, 32, seed=i)
    spec = {'files': [(f'{url}/kodim{i:02d}.png', f'kodim{i:02d}.png') for i in range(3)], 'count': 3,
            'sizes': {(48, 32), (32, 48)}, 'sha256': {'kodim00.png': sha256(www / 'kodim00.png')}}
    monkeypatch.setitem(datasets.DOWNLOADS, 'kodak', spec)
    folder = datasets.download_dataset('kodak', root=str(tmp_path / 'data'), progress=False)
    assert folder == str(tmp_path / 'data' / 'kodak')
    assert sorted(os.listdir(folder)) == ['kodim00.png', 'kodim01.png', 'kodim02.png']
    assert datasets_main(['download', 'kodak', '--root', str(tmp_path / 'data')]) == 0  # present: verified only

    bad_sha = {**spec, 'sha256': {'kodim01.png': '0' * 64}}
    monkeypatch.setitem(datasets.DOWNLOADS, 'kodak', bad_sha)
    with pytest.raises(datasets.DownloadError, match='kodim01.png'):
        datasets.download_dataset('kodak', root=str(tmp_path / 'other'), progress=False)
    assert not os.path.exists(tmp_path / 'other' / 'kodak' / 'kodim01.png')  # no half / wrong file left

    monkeypatch.setitem(datasets.DOWNLOADS, 'kodak', {**spec, 'sizes': {(768, 512)}})
    with pytest.raises(datasets.DownloadError, match='size 48x32'):
        datasets.download_dataset('kodak', root=str(tmp_path / 'data'), progress=False)
    missing = {**spec, 'files': spec['files'] + [(f'{url}/kodim99.png', 'kodim99.png')], 'count': 4}
    monkeypatch.setitem(datasets.DOWNLOADS, 'kodak', missing)
    with pytest.raises(datasets.DownloadError, match='could not download .*kodim99.png'):
        datasets.download_dataset('kodak', root=str(tmp_path / 'data'), progress=False)


def test_download_archive_keeps_the_filtered_images(server, tmp_path, monkeypatch):
    www, url = server
    with zipfile.ZipFile(www / 'testimages.zip', 'w') as zf:
        for i in range(2):
            png(tmp_path / 'a.png', 40, 40, seed=i)
            zf.write(tmp_path / 'a.png', f'testimages/RGB/RGB_OR_1200x1200/img{i}.png')
        zf.write(tmp_path / 'a.png', 'testimages/RGB/RGB_OR_600x600/small.png')
        zf.writestr('testimages/README.txt', 'not an image')
    spec = {'archive': f'{url}/testimages.zip', 'archive_name': 'testimages.zip', 'member_filter': '1200x1200',
            'count': 2, 'sizes': {(40, 40)}, 'sha256': {'testimages.zip': sha256(www / 'testimages.zip')}}
    monkeypatch.setitem(datasets.DOWNLOADS, 'tecnick-rgb-1200', spec)
    folder = datasets.download_dataset('tecnick-rgb-1200', root=str(tmp_path / 'data'), progress=False)
    assert sorted(os.listdir(folder)) == ['img0.png', 'img1.png']  # no archive or temporary folder left
    (www / 'broken.zip').write_bytes(b'PK not really')
    monkeypatch.setitem(datasets.DOWNLOADS, 'tecnick-rgb-1200', {**spec, 'archive': f'{url}/broken.zip',
                                                               'sha256': {}})
    with pytest.raises(datasets.DownloadError, match='not a valid zip'):
        datasets.download_dataset('tecnick-rgb-1200', root=str(tmp_path / 'new'), progress=False)


def test_the_url_table_covers_the_paper_test_sets():
    assert datasets.DOWNLOADS['kodak']['count'] == len(datasets.DOWNLOADS['kodak']['files']) == 24
    assert {'kodak', 'tecnick-rgb-1200', 'clic2022-test'} <= set(datasets.DOWNLOADS)


def test_jpeg_anchor_for_a_folder_feeds_bd_rate(kodak_dir, tmp_path, capsys):
    folder = tmp_path / 'three'
    folder.mkdir()
    for name in ('kodim01.png', 'kodim02.png', 'kodim03.png'):
        os.symlink(os.path.join(kodak_dir, name), folder / name)
    out = tmp_path / 'jpeg.json'
    assert anchors_main([str(folder), '--codec', 'jpeg', '--qualities', '20,40,60,80,95', '--output', str(out)]) == 0
    data = json.loads(out.read_text())
    assert data['test-set'] == 'three' and data['num_images'] == 3 and data['name'] == 'JPEG'
    bpp, psnr = data['results']['bpp'], data['results']['psnr']
    assert bpp == sorted(bpp) and psnr == sorted(psnr) and 0.2 < bpp[0] < bpp[-1] < 8 and 25 < psnr[0] < 45
    assert data['results']['psnr-rgb'] == psnr and len(data['per_image']) == 3
    assert bdrate_main([str(out), '--anchor', str(out)]) == 0
    assert '| mean of per-image PSNR (paper) | cubic (paper) | +0.00 [' in capsys.readouterr().out
    assert anchors_main([str(folder), '--codec', 'vtm', '--output', str(tmp_path / 'v.json'),
                         '--', '--build-dir', str(tmp_path / 'no-vtm'), '--config', 'x.cfg']) == 2
    assert 'no-vtm' in capsys.readouterr().err


@pytest.fixture
def empty_places(tmp_path, monkeypatch):
    """No dataset anywhere: an empty root, no config file, no shared folder."""
    monkeypatch.setenv('LVAE_DATASETS', str(tmp_path / 'root'))
    monkeypatch.setenv('LVAE_CONFIG', str(tmp_path / 'none.json'))
    monkeypatch.setattr(paths, 'SHARED_DATASETS', str(tmp_path / 'no-shared'))
    return tmp_path / 'root'


def test_a_missing_test_set_is_downloaded_when_asked_for(server, empty_places, monkeypatch, capsys):
    www, url = server
    for i in range(2):
        png(www / f'kodim{i:02d}.png', 64, 64, seed=i)
    monkeypatch.setitem(datasets.DOWNLOADS, 'kodak', {
        'files': [(f'{url}/kodim{i:02d}.png', f'kodim{i:02d}.png') for i in range(2)], 'count': 2,
        'sizes': {(64, 64)}, 'sha256': {}})
    files = as_test_set('kodak', progress=False).paths
    assert [os.path.basename(f) for f in files] == ['kodim00.png', 'kodim01.png']
    assert os.path.dirname(files[0]) == str(empty_places / 'kodak')
    assert sorted(os.listdir(empty_places)) == ['kodak']  # the partial folder was renamed
    assert 'downloading it into' in capsys.readouterr().err
    assert as_test_set('kodak', progress=False).paths == files  # found now: nothing fetched


def test_an_interrupted_download_never_looks_complete(server, empty_places, monkeypatch):
    www, url = server
    png(www / 'kodim00.png', 64, 64)
    monkeypatch.setitem(datasets.DOWNLOADS, 'kodak', {
        'files': [(f'{url}/kodim00.png', 'kodim00.png'), (f'{url}/gone.png', 'gone.png')], 'count': 2,
        'sizes': None, 'sha256': {}})
    with pytest.raises(FileNotFoundError) as info:
        as_test_set('kodak', progress=False).paths
    message = str(info.value)
    assert '\n' not in message and f'{url}/kodim00.png' in message and str(empty_places / 'kodak') in message
    assert not os.path.exists(empty_places / 'kodak')  # only kodak.partial, which no lookup returns
    with pytest.raises(FileNotFoundError):
        paths.dataset_path('kodak')


def test_offline_the_error_names_the_url_and_the_folder(empty_places, monkeypatch):
    monkeypatch.setitem(datasets.DOWNLOADS, 'kodak', {
        'files': [('http://127.0.0.1:9/kodim01.png', 'kodim01.png')], 'count': 1, 'sizes': None, 'sha256': {}})
    with pytest.raises(FileNotFoundError, match=r'fetch http://127\.0\.0\.1:9/kodim01\.png by hand and put its '
                                                r'1 images in .*root/kodak') as info:
        as_test_set('kodak', progress=False).paths
    message = str(info.value)
    assert 'LVAE_DATASETS' in message and '--dataset_name FOLDER' in message and '\n' not in message
    assert not os.path.exists(empty_places) or os.listdir(empty_places) == []   # no empty kodak.partial left


def test_extraction_writes_new_regular_files_never_through_a_link(tmp_path):
    """A link planted in a shared dataset folder (ok.png -> victim.txt) is replaced, its target left alone."""
    png(tmp_path / 'a.png', 8, 8)
    with zipfile.ZipFile(tmp_path / 'set.zip', 'w') as zf:
        zf.write(tmp_path / 'a.png', 'set/ok.png')
    folder = tmp_path / 'data'
    folder.mkdir()
    (tmp_path / 'victim.txt').write_text('precious')
    os.symlink(tmp_path / 'victim.txt', folder / 'ok.png')
    assert datasets._extract_images(str(tmp_path / 'set.zip'), str(folder), '') == ['ok.png']
    assert (tmp_path / 'victim.txt').read_text() == 'precious'
    assert not os.path.islink(folder / 'ok.png') and (folder / 'ok.png').read_bytes() == (tmp_path / 'a.png').read_bytes()


def test_anchor_qualities_and_a_datasets_root_that_is_a_file_are_named(tmp_path, monkeypatch, capsys):
    png(tmp_path / 'a.png', 16, 16)
    assert anchors_main([str(tmp_path), '--codec', 'jpeg', '--qualities', '10,abc']) == 2
    err = capsys.readouterr().err
    assert "--qualities takes comma-separated integers (e.g. 10,20,30), got 'abc'" in err
    monkeypatch.setenv('LVAE_DATASETS', str(tmp_path / 'a.png'))
    monkeypatch.setenv('LVAE_CONFIG', str(tmp_path / 'none.json'))
    with pytest.raises(ValueError, match='LVAE_DATASETS=.*a.png is not a folder'):
        paths.dataset_path('kodak')
