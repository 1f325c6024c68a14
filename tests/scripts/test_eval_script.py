"""eval-var-rate.py: one real run as a subprocess, and its argument / error handling in-process."""
import json
import os
import subprocess
import sys

import pytest
import torch

import lvae
from lvae.bdrate.__main__ import main as bdrate_main
from lvae.checkpoint import save_checkpoint, sha256_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, 'eval-var-rate.py')


@pytest.fixture(scope='module')
def kodak3(kodak_dir, tmp_path_factory):
    """A folder named 'kodak' with 3 of the Kodak images (links), so the Kodak anchor applies."""
    folder = tmp_path_factory.mktemp('sets') / 'kodak'
    folder.mkdir()
    for name in ('kodim01.png', 'kodim07.png', 'kodim23.png'):
        os.symlink(os.path.join(kodak_dir, name), folder / name)
    return str(folder)


def test_script_writes_json_png_and_bd_table(kodak3, tmp_path):
    """A model without registered weights is evaluated untrained, with a warning."""
    out = tmp_path / 'res' / 'tiny.json'
    run = subprocess.run([sys.executable, SCRIPT, '--model', 'rd_model_tiny', '--dataset_name',
                          kodak3, '--steps', '4', '--device', 'cpu', '--output', str(out), '--no-progress'],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert 'BD metrics of rd_model_tiny w.r.t. VTM-18.0 on kodak' in run.stdout
    assert '| cubic (paper) |' in run.stdout and (tmp_path / 'res' / 'tiny.png').stat().st_size > 10_000
    data = json.loads(out.read_text())
    assert data['name'] == 'rd_model_tiny' and data['test-set'] == 'kodak' and data['model'] == 'rd_model_tiny'
    assert len(data['lambdas']) == 4
    assert data['lambdas'][0] == pytest.approx(4) and data['lambdas'][-1] == pytest.approx(2048)
    assert set(data['results']) == {'bpp', 'psnr', 'psnr-rgb', 'psnr_of_mean_mse', 'bpp_std', 'psnr_std'}
    assert data['results']['psnr-rgb'] == data['results']['psnr'] and len(data['results']['bpp']) == 4
    assert [p['file'] for p in data['per_image']] == ['kodim01.png', 'kodim07.png', 'kodim23.png']
    assert data['per_image'][0]['height'] == 512 and data['per_image'][0]['width'] == 768
    assert data['bpp_pixels'] == 'original' and data['samples'] == 1 and data['seed'] == 0
    assert data['device'] == 'cpu' and data['torch'] == torch.__version__ and data['weights_sha256'] is None
    assert 'warning: no weights are registered for rd_model_tiny: evaluating an UNTRAINED model' in run.stderr
    assert 'Traceback' not in run.stderr
    assert set(data['bd_rate']) == {'vtm-18.0', 'yang-mandt-2022'} and data['intervals']['resamples'] == 2000
    assert 'w.r.t. previous bound (Yang & Mandt 2022) on kodak' in run.stdout
    # no path of this machine: the dataset by file names, sizes and hashes, the weights by name
    assert str(tmp_path) not in out.read_text() and kodak3 not in out.read_text()
    assert [f['file'] for f in data['dataset']['files']] == ['kodim01.png', 'kodim07.png', 'kodim23.png']
    assert all(len(f['sha256']) == 64 and f['bytes'] > 100_000 for f in data['dataset']['files'])


def test_three_lambdas_end_cleanly_with_n_a(eval_script, kodak3, tmp_path, monkeypatch, capsys):
    """Fewer than 4 lambdas: the BD table says n/a and why, exit status 0; the default output goes under
    runs/eval/ of the working folder."""
    monkeypatch.chdir(tmp_path)
    assert eval_script.main(['--model', 'rd_model_tiny', '--random-init', '--dataset_name', kodak3, '--steps', '3',
                             '--device', 'cpu', '--no-progress']) == 0
    out = capsys.readouterr().out
    assert '| mean of per-image PSNR (paper) | cubic (paper) | n/a | n/a |' in out
    assert 'BD-rate needs at least 4 points on the test curve, got 3' in out
    assert sorted(os.listdir(tmp_path / 'runs' / 'eval')) == ['rd_model_tiny-kodak.json', 'rd_model_tiny-kodak.png']


def test_errors_are_one_line_messages(eval_script, odd_dir, capsys, tmp_path):
    cases = [
        (['--model_args', "__import__('os').system('echo hacked')"], 'expected comma-separated KEY=VALUE'),
        (['--model_args', 'lmb_range=__import__("os")'], 'must be a Python literal'),
        (['--model', 'no_such_model'], "unknown model 'no_such_model'"),
        (['--dataset_name', 'no-such-set'], "unknown dataset 'no-such-set'"),
        (['--model', 'rd_model_tiny', '--pretrained'], "no pretrained weights are registered for 'rd_model_tiny'"),
        (['--weights', str(tmp_path / 'missing.pt')], 'checkpoint not found'),
        (['--anchor', 'x265'], "anchor 'x265' is neither a file nor a shipped codec"),
    ]
    for argv, message in cases:
        assert eval_script.main(argv + ['--dataset_name', odd_dir] * ('--dataset_name' not in argv)) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith('error: ') and message in err, (argv, err)
    assert eval_script.main(['--model', 'rd_model_tiny', '--random-init', '--dataset_name', odd_dir]) == 2
    err = capsys.readouterr().err
    assert 'truncated.png' in err and 'not-an-image.png' in err and 'Traceback' not in err


@pytest.fixture(scope='module')
def one_image(kodak_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp('one')
    from PIL import Image
    Image.open(os.path.join(kodak_dir, 'kodim05.png')).crop((0, 0, 100, 70)).save(folder / 'crop.png')
    return str(folder)


def test_weights_with_and_without_config(eval_script, one_image, tmp_path, capsys):
    torch.manual_seed(3)
    model = lvae.get_model('rd_model_tiny', lmb_range=(16, 1024))
    with_config = tmp_path / 'with_config.pt'
    save_checkpoint({'model': model.state_dict(), 'config': model.config.to_dict(), 'model_name': 'my_tiny'},
                    with_config)
    bare = tmp_path / 'bare.pt'
    save_checkpoint({'model': model.state_dict()}, bare)
    common = ['--dataset_name', one_image, '--steps', '2', '--device', 'cpu', '--no-progress']

    assert eval_script.main(['--weights', str(with_config), '--output', str(tmp_path / 'a.json')] + common) == 0
    a = json.loads((tmp_path / 'a.json').read_text())
    assert a['model'] == 'my_tiny' and a['weights_sha256'] == sha256_file(with_config)
    assert a['weights'] == 'with_config.pt'  # the file name; the sha256 identifies it
    assert a['lambdas'] == pytest.approx([16, 1024]) and a['model_config']['lmb_range'] == [16, 1024]
    assert a['outside_lmb_range'] == [False, False]  # the grid's rounded ends are inside
    assert 'no vtm-18.0 anchor' in capsys.readouterr().out

    assert eval_script.main(['--model', 'rd_model_tiny', '--model_args', 'lmb_range=(16, 1024)', '--weights', str(bare),
                             '--output', str(tmp_path / 'b.json')] + common) == 0
    b = json.loads((tmp_path / 'b.json').read_text())
    assert b['model'] == 'rd_model_tiny' and b['results']['bpp'] == pytest.approx(a['results']['bpp'], rel=1e-6)

    assert eval_script.main(['--model', 'rd_model_small', '--weights', str(bare)] + common) == 2
    assert 'do not fit' in capsys.readouterr().err
    assert eval_script.main(['--weights', str(with_config), '--model_args', 'smooth_mean=False'] + common) == 2
    assert 'records its model config' in capsys.readouterr().err
    for other, fields in (('rd_model_small', 'dec_dims, dec_nums, enc_dims'), ('rd_model_tiny', 'lmb_range')):
        assert eval_script.main(['--model', other, '--weights', str(with_config)] + common) == 2    # another config
        err = capsys.readouterr().err
        assert f'holds a my_tiny whose config differs from {other} in {fields}' in err and 'drop --model' in err


def test_padded_bpp_flag_and_samples(eval_script, one_image, tmp_path):
    common = ['--model', 'rd_model_tiny', '--random-init', '--dataset_name', one_image, '--lmb_range', '32', '256',
              '--steps', '2', '--device', 'cpu', '--no-progress']
    assert eval_script.main(common + ['--output', str(tmp_path / 'o.json')]) == 0
    assert eval_script.main(common + ['--output', str(tmp_path / 'p.json'), '--bpp_pixels', 'padded',
                                 '--samples', '2']) == 0
    o, p = (json.loads((tmp_path / f).read_text()) for f in ('o.json', 'p.json'))
    assert p['bpp_pixels'] == 'padded' and p['samples'] == 2 and len(p['results']['bpp_std']) == 2
    assert o['lambdas'] == pytest.approx([32, 256])
    # padded pixels: 128x128 for a 70x100 crop; the estimate differs by the pixel ratio up to sampling noise
    ratio = o['results']['bpp'][0] / p['results']['bpp'][0]
    assert ratio == pytest.approx(128 * 128 / (70 * 100), rel=0.2)


def test_an_output_that_cannot_be_written_fails_before_the_work(eval_script, one_image, tmp_path, capsys):
    """/proc, a folder, a path under a file: one line naming the path, before any image is evaluated."""
    (tmp_path / 'file').write_text('x')
    for out, words in [('/proc/x.json', 'cannot write /proc/x.json'), (str(tmp_path), 'is a folder; give a file name'),
                       (str(tmp_path / 'file' / 'r.json'), f'{tmp_path / "file"} is a file, not a folder')]:
        assert eval_script.main(['--model', 'rd_model_tiny', '--random-init', '--steps', '4', '--dataset_name',
                                 one_image, '--output', out, '--no-progress']) == 2
        err = capsys.readouterr()
        assert err.err.startswith('error: ') and words in err.err and len(err.err.splitlines()) == 1, err.err
        assert 'images,' not in err.out   # the summary line of a finished evaluation


def test_non_finite_weights_write_nothing(eval_script, one_image, tmp_path, capsys):
    model = lvae.get_model('rd_model_tiny')
    state = model.state_dict()
    state['bias'][0, 0] = float('nan')
    torch.save({'model': state}, tmp_path / 'nan.pt')
    out = tmp_path / 'r.json'
    assert eval_script.main(['--model', 'rd_model_tiny', '--weights', str(tmp_path / 'nan.pt'), '--steps', '4',
                             '--dataset_name', one_image, '--output', str(out), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert "error: the model's weights hold non-finite values in 1 of" in err and '(bias)' in err
    assert sorted(os.listdir(tmp_path)) == ['nan.pt']   # no result, plot, temporary or lock file


def test_the_optimal_channel_evaluates_like_a_model_and_lands_on_the_truth(eval_script, tmp_path, capsys):
    """`--model gaussian-64-optimal --dataset_name gaussian-64`: no weights needed, every point on the true R(D),
    BD-rate against it within 1% (its interval too)."""
    out = tmp_path / 'o.json'
    assert eval_script.main(['--model', 'gaussian-64-optimal', '--dataset_name', 'gaussian-64', '--output', str(out),
                             '--device', 'cpu', '--no-progress']) == 0
    printed = capsys.readouterr()
    assert 'warning' not in printed.err and 'every point lies on the truth' in printed.out
    bd = json.loads(out.read_text())['bd_rate']['true-rd']['psnr_of_mean_mse']
    assert abs(bd['value']) < 1 and -1 < bd['interval'][0] < bd['interval'][1] < 1


def test_refine_flag_records_the_refinement_and_bdrate_compares_it_with_the_plain_result(eval_script, one_image,
                                                                                          tmp_path, capsys):
    common = ['--model', 'rd_model_small', '--dataset_name', one_image, '--steps', '4', '--device', 'cpu',
              '--no-progress']
    assert eval_script.main(common + ['--output', str(tmp_path / 'plain.json')]) == 0
    assert eval_script.main(common + ['--output', str(tmp_path / 'refined.json'), '--refine', '3', '--refine-lr',
                                 '0.02']) == 0
    refined = json.loads((tmp_path / 'refined.json').read_text())
    assert refined['refine']['steps'] == 3 and refined['refine']['lr'] == 0.02
    assert json.loads((tmp_path / 'plain.json').read_text())['refine'] is None
    capsys.readouterr()
    assert bdrate_main([str(tmp_path / 'refined.json'), '--anchor', str(tmp_path / 'plain.json')]) == 0
    out = capsys.readouterr().out
    assert 'w.r.t. rd_model_small' in out and 'paired: plain.json resampled with the same images' in out
    assert eval_script.main(common + ['--refine', '-1']) == 2
    assert 'refinement needs steps >= 0' in capsys.readouterr().err
