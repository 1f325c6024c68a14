"""A result and a journal are those of everything that made them: the model's config and weights, the settings and
the code's versions; outputs are never read as inputs; names the file system refuses are refused before the work;
a damaged journal entry is evaluated again."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import lvae
from lvae.evaluation import evaluate_bound
from lvae.evaluation.journal import Journal, journal_settings


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """Three small images."""
    folder = tmp_path_factory.mktemp('three')
    rng = np.random.default_rng(1)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f'im{k}.png')
    return str(folder)


def flags(folder, out, *extra):
    return ['--model', 'rd_model_tiny', '--random-init', '--steps', '2', '--dataset_name', folder, '--device', 'cpu',
            '--no-progress', '--output', str(out), *extra]


def test_a_config_that_changes_no_weight_changes_the_journals_settings():
    torch.manual_seed(0)
    smooth = lvae.get_model('rd_model_tiny')
    plain = lvae.get_model('rd_model_tiny', smooth_mean=False)
    plain.load_state_dict(smooth.state_dict())   # the same weights, another forward
    settings = [journal_settings(m, [4.0], 1, 0, None, None, 'device', torch.device('cpu'), False)
                for m in (smooth, plain)]
    assert settings[0]['weights'] == settings[1]['weights'] and settings[0] != settings[1]
    assert settings[0]['config']['smooth_mean'] is True and settings[0]['torch'] == torch.__version__


def test_a_result_of_another_config_is_not_replaced_nor_its_journal_resumed(eval_script, folder, tmp_path, capsys):
    out = tmp_path / 'r.json'
    assert eval_script.main(flags(folder, out)) == 0
    assert eval_script.main(flags(folder, out, '--model_args', 'smooth_mean=False')) == 2
    assert 'holds a result of other settings (model_config.smooth_mean true there, false now)' in \
        capsys.readouterr().err
    journal = Journal(tmp_path / '.x.json.journal')
    journal.start({'config': {'smooth_mean': True}})
    with pytest.raises(ValueError, match='other settings \\(config differ'):
        Journal(journal.path).start({'config': {'smooth_mean': False}})


def test_an_output_inside_the_image_folder_is_refused(eval_script, folder, capsys):
    assert eval_script.main(flags(folder, os.path.join(folder, 'res.json'))) == 2
    assert 'is inside the image folder' in capsys.readouterr().err
    assert sorted(os.listdir(folder)) == ['im0.png', 'im1.png', 'im2.png']


def test_a_name_too_long_for_the_files_beside_it_is_refused_before_the_work(eval_script, folder, tmp_path, capsys):
    out = tmp_path / ('r' * 225 + '.json')   # 230 characters: the result fits, its journal's temporary would not
    assert eval_script.main(flags(folder, out)) == 2
    err = capsys.readouterr().err
    assert 'is 230 characters long' in err and 'Errno' not in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_a_damaged_journal_entry_is_evaluated_again_with_a_warning(tmp_path):
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny').eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    whole = evaluate_bound(model, images, steps=2, device='cpu', progress=False)
    path = tmp_path / 'j'
    evaluate_bound(model, images, steps=2, device='cpu', progress=False, journal=path)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    del entry['bits']
    path.write_text('\n'.join([lines[0], json.dumps(entry), lines[2]]) + '\n')
    with pytest.warns(UserWarning, match=f'{path}: the entry of 0000 is damaged \\(no \'bits\'\\)'):
        again = evaluate_bound(model, images, steps=2, device='cpu', progress=False, journal=path)
    assert again['resumed'] == 1 and again['bpp'] == pytest.approx(whole['bpp'], rel=1e-6)


def test_a_file_is_hashed_from_the_bytes_its_pixels_came_from(tmp_path):
    """An image replaced after it was read keeps, in the record, the hash of what was evaluated."""
    from lvae.evaluation import as_test_set
    rng = np.random.default_rng(2)
    first = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(first).save(tmp_path / 'a.png')
    read = (tmp_path / 'a.png').read_bytes()
    test = as_test_set(str(tmp_path), progress=False)
    Image.fromarray(255 - first).save(tmp_path / 'a.png')   # replaced while the evaluation runs
    assert test.record['files'] == [{'file': 'a.png', 'bytes': len(read), 'sha256': hashlib.sha256(read).hexdigest()}]
    assert torch.equal(test.image(0)[1], torch.from_numpy(first).permute(2, 0, 1).float() / 255)
