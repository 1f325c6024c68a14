"""Where results go and how they are written: names that say what was measured, nothing replaced that an evaluation
did not write, a result written whole or not at all, interrupts that leave nothing behind, pairing by content."""
import errno
import fcntl
import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

import lvae.evaluation
from lvae.bdrate.__main__ import main as bdrate_main
from lvae.cli import Interrupted
from lvae.evaluation import as_test_set
from lvae.evaluation import intervals as intervals_module
from lvae.evaluation.intervals import bootstrap
from lvae.evaluation import outputs
from lvae.evaluation.outputs import (OutputError, check_output, default_output, drawn_by_lvae, output_lock,
                                     write_pair)
from lvae.evaluation.shards import Part
from lvae.evaluation.results import dataset_curves, mean_objective, per_image_figures


@pytest.fixture()
def images(tmp_path):
    """A folder of two small images."""
    folder = tmp_path / 'imgs'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ('a.png', 'b.png'):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    return folder


def tiny(images, *extra):
    return ['--model', 'rd_model_tiny', '--random-init', '--dataset_name', str(images), '--steps', '2', '--device',
            'cpu', '--no-progress', *extra]


def test_default_names_carry_the_settings_that_change_the_numbers():
    base = os.path.join('runs', 'eval')
    assert default_output('m', 'kodak') == os.path.join(base, 'm-kodak.json')
    assert default_output('m', 'kodak', refine=50, samples=4, seed=3, bpp_pixels='padded') == \
        os.path.join(base, 'm-kodak-refine50-samples4-seed3-padded-pixels.json')


def test_plain_and_refined_evaluations_in_one_folder_leave_two_results(eval_script, images, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    assert eval_script.main(tiny(images)) == 0
    assert eval_script.main(tiny(images, '--refine', '1')) == 0
    results = sorted(os.listdir(tmp_path / 'runs' / 'eval'))
    assert results == ['rd_model_tiny-imgs-refine1.json', 'rd_model_tiny-imgs-refine1.png', 'rd_model_tiny-imgs.json',
                       'rd_model_tiny-imgs.png']
    plain, refined = (json.loads((tmp_path / 'runs' / 'eval' / f).read_text()) for f in (results[2], results[0]))
    assert plain['refine'] is None and refined['refine']['steps'] == 1
    assert drawn_by_lvae(tmp_path / 'runs' / 'eval' / 'rd_model_tiny-imgs.png')
    capsys.readouterr()
    # another setting that the name does not carry (the lambdas) never silently replaces a result
    assert eval_script.main(tiny(images, '--lmb_range', '8', '64')) == 2
    err = capsys.readouterr().err
    assert 'holds a result of other settings (lambdas' in err and '--overwrite' in err
    assert json.loads((tmp_path / 'runs' / 'eval' / results[2]).read_text())['lambdas'] == plain['lambdas']
    assert eval_script.main(tiny(images, '--lmb_range', '8', '64', '--overwrite')) == 0


def test_an_output_never_replaces_an_input_nor_puts_json_in_a_png(eval_script, images, tmp_path, capsys):
    before = (images / 'a.png').read_bytes()
    (tmp_path / 'notes.json').write_text('{"mine": 1}')
    for out, words in [(images / 'a.json', 'a.png exists and is not a plot of an evaluation'),
                       (tmp_path / 'curve.png', 'must name a .json file'),
                       (tmp_path / 'notes.json', 'notes.json exists and is not an evaluation result')]:
        assert eval_script.main(tiny(images, '--output', str(out))) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and words in err and len(err.splitlines()) == 1, err
    assert (images / 'a.png').read_bytes() == before and not (images / 'a.json').exists()
    assert not (tmp_path / 'curve.png').exists() and (tmp_path / 'notes.json').read_text() == '{"mine": 1}'


def test_a_failed_write_names_the_path_and_keeps_the_previous_pair(tmp_path):
    out, png = tmp_path / 'res.json', tmp_path / 'res.png'
    out.write_text('old json')
    png.write_bytes(b'old png')

    def full_disk(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise OSError(errno.ENOSPC, 'No space left on device')

    def plot(tmp):
        with open(tmp, 'wb') as f:
            f.write(b'new png')

    with pytest.raises(OSError, match=f'cannot write {out}: No space left on device; the previous result'):
        write_pair(str(out), full_disk, plot)
    assert out.read_text() == 'old json' and png.read_bytes() == b'old png'
    assert sorted(os.listdir(tmp_path)) == ['res.json', 'res.png']   # no temporary file left


def test_an_interrupted_evaluation_writes_nothing_and_exits_with_the_signal(eval_script, images, tmp_path,
                                                                           monkeypatch, capsys):
    out = tmp_path / 'r.json'
    assert eval_script.main(tiny(images, '--output', str(out))) == 0
    before = out.read_bytes(), (tmp_path / 'r.png').read_bytes()

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError('the signal did not interrupt the evaluation')

    monkeypatch.setattr(lvae.evaluation, 'evaluate_bound', interrupted)   # as the script finds it
    capsys.readouterr()
    assert eval_script.main(tiny(images, '--output', str(out))) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert 'interrupted by SIGTERM: nothing written' in err and 'Traceback' not in err
    assert (out.read_bytes(), (tmp_path / 'r.png').read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ['imgs', 'r.json', 'r.png']   # no temporary or lock file
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handlers are given back


def test_a_lock_file_removed_before_it_was_locked_is_not_trusted(tmp_path, monkeypatch):
    """Between opening the lock and locking it, its holder may finish and remove it and a third evaluation make a
    new one at the path: locking the removed file would let two evaluations in. The lock is taken again."""
    out, calls = str(tmp_path / 'r.json'), []
    real = fcntl.lockf

    def replaced_first(fd, op):
        calls.append(os.fstat(fd).st_ino)
        if len(calls) == 1:  # the holder removes its file; another evaluation makes the path's new one
            os.remove(tmp_path / '.r.json.lock')
            (tmp_path / '.r.json.lock').write_text('')
        return real(fd, op)

    monkeypatch.setattr(outputs.fcntl, 'lockf', replaced_first)
    with output_lock(out):
        held = os.stat(tmp_path / '.r.json.lock').st_ino
    assert len(calls) == 2 and calls[1] == held != calls[0]
    assert not (tmp_path / '.r.json.lock').exists()


def test_the_lock_holder_removes_what_killed_writes_of_its_own_files_left(tmp_path):
    out = str(tmp_path / 'r.json')
    mine = ['.r.json.abcd1234.tmp', '.r.png.abcd1234.tmp', '..r.json.journal.abcd1234.tmp']
    others = ['..r.json.journal-1-of-2.abcd1234.tmp', '.s.json.abcd1234.tmp', '.r.json.tmp', 'r.json.abcd1234.tmp']
    for name in mine + others:
        (tmp_path / name).write_text('cut short')
    with output_lock(out):
        assert sorted(os.listdir(tmp_path)) == sorted(others + ['.r.json.lock'])
    with output_lock(out, Part(0, 2)):   # a part cleans its own journal's only
        assert '..r.json.journal-1-of-2.abcd1234.tmp' not in os.listdir(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(others[1:])


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() != 0, reason='gives a file to another user')
def test_another_users_lock_is_named_with_the_ways_out(tmp_path):
    lock = tmp_path / '.r.json.lock'
    lock.write_text('')
    os.chown(lock, 54321, 54321)
    hint = outputs._owner_hint(str(lock), PermissionError(errno.EACCES, 'Permission denied'))
    assert 'remove it' in hint and '--output' in hint and ('54321' in hint or "'s" in hint)


def test_two_evaluations_never_write_one_output_at_once(tmp_path):
    out = str(tmp_path / 'r.json')
    with output_lock(out):
        pid = os.fork()
        if pid == 0:  # a second process asks for the same output
            try:
                with output_lock(out):
                    os._exit(0)
            except OutputError as e:
                os._exit(3 if f'pid {os.getppid()}' in str(e) else 4)
        assert os.waitpid(pid, 0)[1] >> 8 == 3
    assert os.listdir(tmp_path) == []   # the lock is gone with the evaluation


def test_check_output_accepts_an_earlier_result_and_its_plot(tmp_path):
    out = tmp_path / 'r.json'
    out.write_text(json.dumps({'results': {'bpp': [1], 'psnr': [30]}, 'lambdas': [4]}))
    (tmp_path / 'r.png').write_bytes(b'a plot drawn before plots were marked')
    assert check_output(str(out)) == (str(out), str(tmp_path / 'r.png'))


def result_of(files, bpp):
    psnrs = [[30.0 + i, 33.0 + i, 36.0 + i, 39.0 + i] for i in range(len(files))]
    rows = [{'file': f, 'bpp': list(b), 'psnr': p, 'mse': [10 ** (-v / 10) for v in p]}
            for f, b, p in zip(files, bpp, psnrs)]
    curve = dataset_curves(*per_image_figures({'per_image': rows}))
    return {'name': 'r', 'test-set': 'mine', 'per_image': rows, 'lambdas': [1, 2, 3, 4],
            'results': {key: value.tolist() for key, value in curve.items()}}


def test_results_are_paired_by_content_not_by_file_name(tmp_path, capsys):
    bpp = [[0.1, 0.2, 0.4, 0.8], [0.2, 0.3, 0.5, 0.9], [0.15, 0.25, 0.45, 0.85]]
    files = ['x.png', 'y.png', 'z.png']
    a, b = result_of(files, bpp), result_of(files, bpp)
    a['dataset'] = {'files': [{'file': f, 'sha256': f'{i}' * 64} for i, f in enumerate(files)]}
    b['dataset'] = {'files': [{'file': f, 'sha256': f'{i + 1}' * 64} for i, f in enumerate(files)]}
    (tmp_path / 'a.json').write_text(json.dumps(a))
    (tmp_path / 'b.json').write_text(json.dumps(b))
    assert bdrate_main([str(tmp_path / 'a.json'), '--anchor', str(tmp_path / 'b.json')]) == 0
    out = capsys.readouterr().out
    assert 'hold figures of different images (3 of their 3 files have the same name but other content' in out
    assert 'resampled with the same images' not in out
    b['dataset'] = a['dataset']
    (tmp_path / 'b.json').write_text(json.dumps(b))
    assert bdrate_main([str(tmp_path / 'a.json'), '--anchor', str(tmp_path / 'b.json')]) == 0
    assert 'paired: b.json resampled with the same images' in capsys.readouterr().out


def test_the_bootstrap_in_chunks_draws_what_it_drew_at_once(monkeypatch):
    """Counts per image in chunks of resamples give the intervals of the (resamples, N, L) array they replace."""
    rng = np.random.default_rng(1)
    bpp = np.sort(rng.random((37, 6)), axis=1)
    img_psnr = np.sort(25 + 10 * rng.random((37, 6)), axis=1)
    mse = 10 ** (-img_psnr / 10)
    whole = bootstrap(bpp, img_psnr, mse, truth=lambda m: -np.log(m))
    monkeypatch.setattr(intervals_module, 'CHUNK', 100)   # 2 resamples a chunk
    chunked = bootstrap(bpp, img_psnr, mse, truth=lambda m: -np.log(m))
    picks = np.random.default_rng(0).integers(0, 37, size=(2000, 37))
    boot = dataset_curves(bpp[picks], img_psnr[picks], mse[picks])
    for key in ('bpp', 'psnr', 'psnr_of_mean_mse'):
        expected = np.percentile(boot[key], [2.5, 97.5], axis=0).T
        np.testing.assert_allclose(whole[key], expected, rtol=1e-12)
        np.testing.assert_allclose(chunked[key], expected, rtol=1e-12)


def test_a_known_test_set_with_missing_images_says_so(kodak_dir, tmp_path, eval_script, capsys):
    folder = tmp_path / 'kodak'
    folder.mkdir()
    for name in ('kodim01.png', 'kodim02.png'):
        os.symlink(os.path.join(kodak_dir, name), folder / name)
    os.symlink(tmp_path / 'gone.png', folder / 'kodim03.png')   # a link that leads nowhere
    test = as_test_set(str(folder), progress=False)
    assert test.partial == (2, 24) and test.record['expected_images'] == 24
    assert [os.path.basename(e.path) for e in test.skipped] == ['kodim03.png']
    assert 'symbolic link' in str(test.skipped[0]) and 'does not exist' in str(test.skipped[0])
    assert eval_script.main(['--model', 'rd_model_tiny', '--random-init', '--dataset_name', str(folder), '--steps', '1',
                             '--no-progress', '--output', str(tmp_path / 'r.json')]) == 2
    err = capsys.readouterr().err
    assert 'warning: kodak here has 2 of its 24 images' in err and 'kodim03.png' in err


def test_flags_are_checked_before_the_work_and_named(eval_script, capsys):
    for argv, words in [(['--refine-lr', 'inf'], '--refine-lr must be a learning rate in (0, 1], got inf'),
                        (['--refine-lr', '1e30'], '--refine-lr must be'),
                        (['--seed', '-1'], '--seed must be an integer in [0, 2**63), got -1'),
                        (['--lmb_range', '1', 'inf'], '--lmb_range takes LOW HIGH with 0 < LOW <= HIGH, both finite'),
                        (['--lmb_range', '64', '64', '--steps', '3'], 'is one lambda'),
                        (['--output', 'x.png'], 'must name a .json file'),
                        (['--refine', '0', '--refine-lr', '0.5'], "--refine-lr 0.5 is the rate of a refinement"),
                        (['--output', ''], "--output '' names no file"),
                        (['--refine', '5', '--refine-chain'], '--refine-chain chains refinements to convergence')]:
        assert eval_script.main(argv + ['--dataset_name', 'no-such-set']) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith('error: ') and words in err, (argv, err)


def test_non_finite_per_image_figures_are_named(tmp_path, capsys):
    data = result_of(['x.png', 'y.png'], [[0.1, 0.2, 0.4, 0.8], [0.2, 0.3, 0.5, 0.9]])
    data['per_image'][1]['bpp'][2] = float('nan')
    (tmp_path / 'nan.json').write_text(json.dumps(data))
    assert bdrate_main([str(tmp_path / 'nan.json'), '--anchor', 'vtm-18.0', '--dataset', 'kodak']) == 2
    assert 'per_image[1] (y.png) has a non-finite bpp at point 2' in capsys.readouterr().err


def test_the_objective_of_a_result_is_nats_per_dimension_plus_lambda_times_mse_in_the_minus_one_to_one_scale():
    rows = [{'file': 'x.png', 'bpp': [3.0, 0.0], 'psnr': [40.0, 20.0], 'mse': [1e-4, 1e-2]},
            {'file': 'y.png', 'bpp': [0.0, 3.0], 'psnr': [20.0, 40.0], 'mse': [1e-2, 1e-4]}]
    result = {'per_image': rows, 'lambdas': [2.0, 10.0], 'bpp_pixels': 'original'}
    # 3 bits per pixel are ln 2 nats per dimension (3 per pixel); an MSE m in [0, 1] is 4 m in [-1, 1]
    np.testing.assert_allclose(mean_objective(result), [(np.log(2) + 2 * 4 * 1.01e-2) / 2,
                                                        (np.log(2) + 10 * 4 * 1.01e-2) / 2])
    with pytest.raises(ValueError, match="bpp_pixels 'padded'"):
        mean_objective({**result, 'bpp_pixels': 'padded'})


def test_interrupted_names_its_signal():
    assert Interrupted(signal.SIGINT).name == 'SIGINT' and Interrupted(signal.SIGINT).signum == 2
