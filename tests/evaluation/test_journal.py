"""An evaluation stopped part way resumes from its journal with the numbers of one run through, and never from the
journal of other settings."""
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae.evaluation import bound as bound_module
from lvae.evaluation import evaluate_bound
from lvae.evaluation.journal import Journal, JournalError


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return lvae.get_model('rd_model_tiny').eval()


@pytest.fixture(scope='module')
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def counting(monkeypatch, stop_at=None):
    """bound_of_image counted; at call ``stop_at`` it raises KeyboardInterrupt (a stopped evaluation)."""
    calls = []
    real = bound_module.bound_of_image

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bound_module, 'bound_of_image', counted)
    return calls


def run(model, images, **kwargs):
    return evaluate_bound(model, images, steps=2, device='cpu', progress=False, refine=1, **kwargs)


def test_a_stopped_evaluation_resumes_with_the_numbers_of_one_run_through(model, images, tmp_path, monkeypatch):
    whole = run(model, images)
    journal = tmp_path / 'j'
    counting(monkeypatch, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(model, images, journal=journal)
    assert len(journal.read_text().splitlines()) == 3   # the settings and the two finished images
    calls = counting(monkeypatch)
    resumed = run(model, images, journal=journal)
    assert len(calls) == 1 and resumed['resumed'] == 2   # only the third image is evaluated again
    assert resumed['per_image'] == whole['per_image']
    assert (resumed['bpp'], resumed['psnr']) == (whole['bpp'], whole['psnr'])


def test_a_line_cut_short_by_a_kill_is_done_again(model, images, tmp_path, monkeypatch):
    journal = tmp_path / 'j'
    whole = run(model, images, journal=journal)
    lines = journal.read_text().splitlines()
    journal.write_text('\n'.join(lines[:-1]) + '\n' + lines[-1][:25])   # the last image's line half written
    calls = counting(monkeypatch)
    again = run(model, images, journal=journal)
    assert len(calls) == 1 and again['resumed'] == 2 and again['per_image'] == whole['per_image']
    assert len(journal.read_text().splitlines()) == 4 and json.loads(journal.read_text().splitlines()[-1])


def test_a_journal_of_other_settings_is_refused_or_discarded_but_never_used(model, images, tmp_path, monkeypatch):
    journal = tmp_path / 'j'
    run(model, images, journal=journal)
    with pytest.raises(JournalError, match=f'{journal} holds the unfinished work of an evaluation of other '
                                           f'settings \\(refine, seed differ\\)'):
        run(model, images, journal=journal, seed=1)
    other = lvae.get_model('rd_model_tiny').eval()   # other weights, the same settings otherwise
    with pytest.raises(JournalError, match='weights differ'):
        run(other, images, journal=journal)
    calls = counting(monkeypatch)
    fresh = run(model, images, journal=Journal(journal, discard_other=True), seed=1)
    assert len(calls) == 3 and fresh['resumed'] == 0 and fresh['seed'] == 1
    assert fresh['per_image'] == run(model, images, seed=1)['per_image']


def test_other_pixels_under_a_journalled_name_are_evaluated_again(model, images, tmp_path, monkeypatch):
    journal = tmp_path / 'j'
    run(model, images, journal=journal)
    changed = images.clone()
    changed[1, 0, 0, 0] = 1 - changed[1, 0, 0, 0]
    calls = counting(monkeypatch)
    assert run(model, changed, journal=journal)['resumed'] == 2 and len(calls) == 1


def test_the_same_command_resumes_an_interrupted_evaluation_and_then_removes_its_journal(eval_script, tmp_path,
                                                                                        monkeypatch, capsys):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ('a.png', 'b.png'):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / 'r.json'
    argv = ['--model', 'rd_model_tiny', '--random-init', '--dataset_name', str(folder), '--steps', '2', '--device',
            'cpu', '--no-progress', '--refine', '1', '--output', str(out)]
    real, calls = bound_module.bound_of_image, []

    def terminated_at_the_second_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(bound_module, 'bound_of_image', terminated_at_the_second_image)
    assert eval_script.main(argv) == 128 + signal.SIGTERM
    journal = tmp_path / '.r.json.journal'
    assert f'1 finished image(s) kept in {journal}: the same command resumes' in capsys.readouterr().err
    assert not out.exists() and journal.exists()
    monkeypatch.setattr(bound_module, 'bound_of_image', real)
    assert eval_script.main(argv) == 0
    result = json.loads(out.read_text())
    assert result['resumed'] == 1 and result['num_images'] == 2
    assert sorted(os.listdir(tmp_path)) == ['imgs', 'r.json', 'r.png']   # the journal and the lock are gone


def test_a_file_that_is_not_a_journal_is_left_alone(model, images, tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text('my notes\n')
    for discard in (False, True):
        with pytest.raises(JournalError, match=f'{notes} is not the journal of an evaluation: it is left alone'):
            run(model, images, journal=Journal(notes, discard_other=discard))
    assert notes.read_text() == 'my notes\n'


@pytest.mark.skipif(not os.path.exists('/dev/full'), reason='needs /dev/full')
def test_a_full_disk_while_journaling_names_the_journal_and_the_cause():
    journal = Journal('/dev/full')   # every write there fails with ENOSPC
    with pytest.raises(OSError, match='cannot write the journal /dev/full: No space left on device; the images it '
                                      'holds are kept'):
        journal.add(0, 'a.png', 'digest', [1.0], [0.1], [0], 1.0)
    assert journal.entries == {}
