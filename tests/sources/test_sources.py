"""lvae.sources: reverse water-filling against closed forms, the samples against the covariance they should
have, bounds against the truth (evaluate_bound, eval-var-rate.py, python -m lvae.bdrate), training on a source."""
import json
import math
import os

import numpy as np
import pytest
import torch

import lvae
from lvae.bdrate.__main__ import main as bdrate_main
from lvae.evaluation import evaluate_bound
from lvae.sources import GaussianField, excess, get_source, list_sources, true_curve
from lvae.sources.__main__ import main as sources_main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDENTITY = np.eye(3).tolist()


def flat_field(stds, size=16):
    """A field with a flat spectrum per component: its eigenvalues are std[k]^2, size^2 times each."""
    return GaussianField(name='flat', size=size, mean=[0.5] * 3, basis=IDENTITY, std=list(stds), alpha=[0.0] * 3)


def test_white_gaussian_rate_is_half_log_per_dimension():
    src = flat_field([0.1, 0.1, 0.1])
    var = 0.01
    for mse in (1e-4, 1e-3, 5e-3, 0.0099):
        assert src.rate_bpp(mse) == pytest.approx(3 * 0.5 * math.log2(var / mse), rel=1e-9)   # 3 values per pixel
    assert src.rate_bpp(var) == src.rate_bpp(0.02) == 0.0
    assert src.zero_rate_psnr() == pytest.approx(20.0)


def test_two_level_spectrum_fills_the_strong_dimensions_first():
    a2, b2 = 0.04, 0.0025                       # one strong component, two weak ones
    src = flat_field([math.sqrt(a2), math.sqrt(b2), math.sqrt(b2)])
    n = src.size ** 2
    theta = 0.01                                # between the levels: only the strong third is coded
    mse = (theta + 2 * b2) / 3
    assert src.water_level(mse) == pytest.approx(theta, rel=1e-9)
    assert src.rate_bpp(mse) == pytest.approx(n * 0.5 * math.log2(a2 / theta) / n, rel=1e-9)
    mse = 0.001                                 # below both: every dimension coded, at the same distortion
    expected = (0.5 * math.log2(a2 / mse) + 2 * 0.5 * math.log2(b2 / mse))
    assert src.rate_bpp(mse) == pytest.approx(expected, rel=1e-9)
    assert src.rate_at_psnr(30.0) == pytest.approx(expected, rel=1e-9)


def test_rd_is_decreasing_and_convex():
    src = get_source('gaussian-64')
    mse = np.geomspace(1e-5, 5e-3, 40)
    rate = src.rate_bpp(mse)
    assert np.all(np.diff(rate) < 0)
    slopes = np.diff(rate) / np.diff(mse)
    assert np.all(np.diff(slopes) > 0)                                     # convex in D


def test_the_samples_have_the_covariance_whose_eigenvalues_are_given():
    src = get_source('gaussian-64')
    lam = src.eigenvalues()
    assert lam.shape == (3 * 64 * 64,) and np.all(lam > 0) and np.all(np.diff(lam) <= 0)
    x = src.sample(400, torch.Generator().manual_seed(0)).double()
    assert x.shape == (400, 3, 64, 64) and x.min() >= 0 and x.max() <= 1
    centred = x - torch.tensor(src.mean, dtype=torch.float64)[:, None, None]
    comps = torch.einsum('ck,nchw->nkhw', torch.tensor(src.basis, dtype=torch.float64), centred)
    power = (torch.fft.fft2(comps).abs() ** 2).mean(0).numpy() / 64 ** 2   # per DFT bin, per component
    ratio = power / src._spectra
    assert ratio.mean() == pytest.approx(1.0, abs=0.03)                    # 3 x 4096 bins, 400 draws each
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.sort(power.ravel())[::-1][:50] == pytest.approx(lam[:50], rel=0.35)   # the strongest eigenvalues
    channel_var = centred.var(dim=(0, 2, 3)).numpy()
    assert channel_var == pytest.approx(src.pixel_std() ** 2, rel=0.1)
    assert centred.square().mean().item() == pytest.approx(lam.mean(), rel=0.05)   # trace / dimensions


def test_samples_are_reproducible_and_the_held_out_set_is_fixed():
    src = get_source('gaussian-64')
    a = src.sample(3, torch.Generator().manual_seed(5))
    assert torch.equal(a, src.sample(3, torch.Generator().manual_seed(5))) and a.dtype == torch.float32
    held = src.held_out()
    assert held.shape == (src.held_out_images, 3, 64, 64) and torch.equal(held, src.held_out())
    assert 'gaussian-64' in list_sources() and src.outside_probability() < 1e-3


def test_an_untrained_models_bound_lies_above_the_truth():
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny')
    src = get_source('gaussian-64')
    res = evaluate_bound(model, src.held_out()[:6], lambdas=[4.0, 64.0, 512.0, 2048.0], progress=False)
    assert [im['file'] for im in res['per_image']] == ['0000', '0001', '0002', '0003', '0004', '0005']
    true_bpp, gap, _ = excess('gaussian-64', res['bpp'], res['psnr_of_mean_mse'])
    assert np.all(gap > 0) and np.all(true_bpp >= 0)
    label, curve = true_curve('gaussian-64', [26.0, 31.0])
    assert label == 'true R(D) of gaussian-64' and len(curve['bpp']) == 17
    assert curve['psnr'][0] == pytest.approx(25.0) and curve['psnr'][-1] == pytest.approx(32.0)
    assert curve['bpp'] == pytest.approx(src.rate_at_psnr(curve['psnr']).tolist())


def test_the_module_prints_the_true_rd(capsys):
    assert sources_main(['gaussian-64', '--psnr', '30', '35']) == 0
    out = capsys.readouterr().out
    src = get_source('gaussian-64')
    for psnr in (30, 35):
        assert f'| {psnr:.1f} | {10 ** (-psnr / 10):.3e} | {src.rate_at_psnr(psnr):.4f} |' in out
    assert sources_main(['gaussian-nope']) == 2


@pytest.mark.parametrize('flags, words', [(['--max_std', '-1'], '--max_std must be in (0, 0.5]'),
                                          (['--size', '0'], '--size must be at least 8 pixels, got 0')])
def test_fit_refuses_values_that_make_no_field(tmp_path, flags, words, capsys):
    assert sources_main(['fit', str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {words}') and len(err.splitlines()) == 1


def test_an_unknown_dataset_name_lists_the_sources_too():
    from lvae.sources import resolve
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*known datasets: kodak.*a source with a known R"
                                         r"\(D\): gaussian-64"):
        resolve('nope')


def test_eval_script_on_a_source_against_the_truth(repo_script, tmp_path, capsys):
    out = tmp_path / 'r.json'
    evaluate = repo_script('eval-var-rate').main
    assert evaluate(['--model', 'rd_model_tiny', '--random-init', '--dataset_name', 'gaussian-64', '--steps', '4',
                     '--output', str(out), '--device', 'cpu', '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert 'w.r.t. true R(D) of gaussian-64' in printed and 'every point lies above the truth' in printed
    data = json.loads(out.read_text())
    assert data['test-set'] == 'gaussian-64' and data['dataset']['held_out_images'] == 100
    assert len(data['per_image']) == 100 and set(data['per_image'][0]) >= {'file', 'bpp', 'psnr', 'mse'}
    assert 'true-rd' in data['bd_rate'] and (tmp_path / 'r.png').stat().st_size > 0
    assert bdrate_main([str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'true R(D) of gaussian-64' in printed and 'every point lies above the truth' in printed


def test_training_on_a_source_validates_against_the_truth(repo_script, tmp_path, capsys):
    assert repo_script('train-var-rate').main([
        '--model', 'rd_model_tiny', '--trainset', 'gaussian-64', '--valset', 'gaussian-64', '--val_images', '4',
        '--val_steps', '4', '--batch_size', '2', '--iterations', '4', '--eval_interval', '4', '--workers', '0',
        '--device', 'cpu', '--runs_root', str(tmp_path), '--name', 'g', '--fixseed']) == 0
    assert 'SourceSamples(gaussian-64' in capsys.readouterr().out
    with open(tmp_path / 'lvae' / 'g' / 'validations.jsonl') as f:
        lines = [json.loads(line) for line in f]
    assert [v['iter'] for v in lines] == [0, 4] and all('val/bd_rate' in v for v in lines)
    assert all(len(v['psnr_of_mean_mse']) == 4 for v in lines)
