"""The rate of each decoder stage and its active units: the diagnostic of a collapsed hierarchy."""
import json
import math
import os

import pytest
import torch

import lvae
from lvae.evaluation.bound import pad_to_multiple
from lvae.evaluation.refine import noise_from
from lvae.evaluation.stages import stage_lines, stage_rates


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return lvae.get_model('rd_model_tiny').train()


def test_the_stages_rates_add_up_to_the_models_rate_and_count_every_channel(model):
    images = [torch.rand(3, 64, 64), torch.rand(3, 40, 70)]   # the second padded to 64 x 128
    rates = stage_rates(model, images, [4.0, 256.0], seed=5)
    cfg = model.config
    assert model.training   # left as it was found
    assert rates['sides'] == ['1/64', '1/32', '1/16', '1/8', '1/4']
    assert rates['units'] == [z * n for z, n in zip(cfg.z_dims, cfg.dec_nums)]   # every latent channel, by stage
    model.eval()
    total = 0.0
    for i, im in enumerate(images):   # the same draws, whole-model KL
        padded = pad_to_multiple(im.unsqueeze(0)).expand(2, -1, -1, -1)
        gens = [torch.Generator().manual_seed(5 + 1000 * i + j) for j in range(2)]
        with torch.inference_mode():
            _, stats = model.forward_end2end(padded, torch.tensor([4.0, 256.0]), noise=noise_from(gens))
        total += float(model.kl_per_image(stats)[1]) / math.log(2)
    model.train()
    assert sum(rates['bpp'][1]) == pytest.approx(total / (64 * 64 + 64 * 128), rel=1e-6)   # the model sums its KL in float32
    everything = stage_rates(model, images, [4.0], threshold=-1.0)
    nothing = stage_rates(model, images, [4.0], threshold=float('inf'))
    assert everything['active'] == [everything['units']] and nothing['active'] == [[0] * 5]
    assert len(stage_lines(rates)) == 2 and stage_lines(rates)[0].startswith('lambda 4: 1/64 ')


def test_the_stages_command_prints_each_images_stages_and_names_a_bad_file(tmp_path, odd_dir, capsys):
    from lvae.evaluation.stages.__main__ import main
    good, bad = os.path.join(odd_dir, 'odd-131x77.png'), os.path.join(odd_dir, 'not-an-image.png')
    out = tmp_path / 'stages.json'
    assert main([good, '--lambdas', '8', '512', '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f'{good} (131x77):\n  lambda 8: 1/64 ') and '\n  lambda 512: 1/64 ' in printed
    record = json.loads(out.read_text())
    assert record['model'] == 'rd_model_small' and len(record['weights_sha256']) == 64
    (image,) = record['images']
    assert image['file'] == 'odd-131x77.png' and image['lambdas'] == [8.0, 512.0]
    assert all(len(row) == 5 for row in image['bpp']) and sum(image['bpp'][1]) > sum(image['bpp'][0])   # rate rises
    assert main([good, bad]) == 2
    assert f'error: {bad}: ' in capsys.readouterr().err
