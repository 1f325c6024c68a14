"""Loading weights: local files, URLs (against a server on 127.0.0.1), errors, atomic saves."""
import argparse
import functools
import http.server
import os
import threading

import pytest
import torch

import lvae
from lvae import checkpoint
from lvae.models import model_from_checkpoint
from lvae.models import registry


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    path = tmp_path / 'tiny.pt'
    checkpoint.save_checkpoint({'model': model.state_dict(), 'iter': 3}, path)
    return model, path


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    hub = tmp_path / 'hub'
    monkeypatch.setattr(torch.hub, '_hub_dir', str(hub))
    return hub


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretrained_path(tiny_ckpt):
    model, path = tiny_ckpt
    loaded = lvae.get_model('rd_model_tiny', pretrained=str(path))
    assert _same_weights(model, loaded)


def test_pretrained_url_downloads_into_hub_cache(tiny_ckpt, server, hub_dir):
    model, path = tiny_ckpt
    loaded = lvae.get_model('rd_model_tiny', pretrained=f'{server}/{path.name}')
    assert _same_weights(model, loaded)
    assert (hub_dir / 'checkpoints' / path.name).is_file()


def test_pretrained_true_uses_the_registered_url(tiny_ckpt, server, hub_dir, monkeypatch):
    model, path = tiny_ckpt
    sha = checkpoint.sha256_file(path)
    monkeypatch.setitem(registry._pretrained, 'rd_model_tiny', {'source': f'{server}/{path.name}', 'sha256': sha[:16]})
    assert _same_weights(model, lvae.get_model('rd_model_tiny', pretrained=True))
    # the published base model's entry points at the authors' file, with the weights under 'model'
    assert registry.pretrained_cfg('rd_model_base')['source'].endswith('/rd_model_base-200k-feb14-2023.pt')


def test_download_with_a_wrong_hash_fails(tiny_ckpt, server, hub_dir):
    _, path = tiny_ckpt
    with pytest.raises(RuntimeError, match='hash|sha256'):
        checkpoint.download(f'{server}/{path.name}', sha256='0' * 16, progress=False)
    assert not (hub_dir / 'checkpoints' / path.name).exists()


def test_unreachable_url_says_what_to_do(hub_dir):
    with pytest.raises(RuntimeError, match='could not download .*local path'):
        checkpoint.download('http://127.0.0.1:9/none.pt', progress=False)


def test_files_that_are_not_checkpoints_are_named_with_what_they_are(tiny_ckpt, tmp_path):
    """Empty, text, truncated, a folder, pickled objects: one line each, naming the file, never torch's advice to
    load it unsafely."""
    _, good = tiny_ckpt
    (tmp_path / 'empty.pt').write_bytes(b'')
    (tmp_path / 'notes.pt').write_text('hello')
    (tmp_path / 'cut.pt').write_bytes(good.read_bytes()[:1000])
    torch.save({'args': argparse.Namespace(lr=1e-4)}, tmp_path / 'objects.pt')
    cases = {'empty.pt': r'is empty \(0 bytes\)', 'notes.pt': 'is not a PyTorch checkpoint .*a text file',
             'cut.pt': 'is truncated or corrupt', 'objects.pt': 'holds Python objects other than tensors',
             '': 'is a folder, not a checkpoint file'}
    for name, words in cases.items():
        with pytest.raises(ValueError, match=words) as err:
            lvae.get_model('rd_model_tiny', pretrained=str(tmp_path / name))
        assert str(tmp_path / name) in str(err.value) and 'weights_only=False' not in str(err.value)
        assert '\n' not in str(err.value)
    with pytest.raises(FileNotFoundError, match='missing.pt'):
        lvae.get_model('rd_model_tiny', pretrained=str(tmp_path / 'missing.pt'))


def test_a_failed_save_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    checkpoint.save_checkpoint({'iter': 1}, path)
    real_save = torch.save

    def full_disk(obj, f):
        real_save(obj, f)
        raise RuntimeError('[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0')

    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(checkpoint.CheckpointWriteError, match=f'cannot write {path}: the write failed .*MiB free'):
        checkpoint.save_checkpoint({'iter': 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {'iter': 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pt']
    (tmp_path / 'file').write_text('x')
    with pytest.raises(checkpoint.CheckpointWriteError, match='file is a file, not a folder'):
        checkpoint.save_checkpoint({'iter': 2}, tmp_path / 'file' / 'run' / 'last.pt')


def test_keys_that_do_not_fit_are_named(tiny_ckpt, tmp_path):
    model, _ = tiny_ckpt
    state = model.state_dict()
    state.pop('bias')
    state['extra.weight'] = torch.zeros(1)
    state['lmb_embedding.0.weight'] = torch.zeros(5, 5)
    path = tmp_path / 'bad.pt'
    torch.save({'model': state}, path)
    with pytest.raises(ValueError) as err:
        lvae.get_model('rd_model_tiny', pretrained=str(path))
    msg = str(err.value)
    assert 'bad.pt' in msg and '1 missing: bias' in msg and '1 unexpected: extra.weight' in msg
    assert 'lmb_embedding.0.weight [5, 5] vs [32, 32]' in msg


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / 'evil.pt'
    torch.save({'model': {}, 'obj': functools.partial(print, 'x')}, path)
    with pytest.raises(ValueError, match='evil.pt holds Python objects other than tensors'):
        checkpoint.load_file(path)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'ck.pt'
    checkpoint.save_checkpoint({'iter': 1}, path)

    def broken_save(obj, f):
        f.write(b'partial')
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({'iter': 2}, path)
    monkeypatch.undo()
    assert checkpoint.load_file(path) == {'iter': 1}
    assert os.listdir(tmp_path) == ['ck.pt']


def test_model_from_checkpoint(tmp_path):
    model = lvae.get_model('rd_model_tiny')
    path = tmp_path / 'run.pt'
    checkpoint.save_checkpoint({'model': model.state_dict(), 'model_name': 'rd_model_tiny',
                                'config': model.config.to_dict()}, path)
    rebuilt, ckpt = model_from_checkpoint(path)
    assert _same_weights(model, rebuilt) and ckpt['model_name'] == 'rd_model_tiny'


def test_export_weights_keeps_only_what_rebuilds_the_model(tmp_path, tiny_ckpt):
    model = lvae.get_model('rd_model_tiny')
    run = tmp_path / 'last_ema.pt'
    checkpoint.save_checkpoint({'model': model.state_dict(), 'model_name': 'rd_model_tiny', 'iter': 7,
                                'config': model.config.to_dict(), 'optimizer': {'state': {}}}, run)
    out = tmp_path / 'lean.pt'
    digest = checkpoint.export_weights(run, out)
    assert digest == checkpoint.sha256_file(out)
    lean = torch.load(out, weights_only=True)
    assert set(lean) == {'model', 'model_name', 'config', 'iter'} and lean['iter'] == 7
    assert _same_weights(model, model_from_checkpoint(out)[0])
    with pytest.raises(ValueError, match='records no model config'):
        checkpoint.export_weights(tiny_ckpt[1], tmp_path / 'x.pt')


def test_exporting_to_a_folder_asks_for_a_file_name(tmp_path, tiny_ckpt, capsys):
    from lvae.checkpoint.__main__ import main as export_main
    (tmp_path / 'out').mkdir()
    with pytest.raises(checkpoint.CheckpointWriteError, match='names a folder; give a file name'):
        checkpoint.save_checkpoint({'x': torch.zeros(1)}, str(tmp_path / 'new') + os.sep)
    assert export_main([str(tiny_ckpt[1]), str(tmp_path / 'out')]) == 2
    assert 'names a folder; give a file name' in capsys.readouterr().err
