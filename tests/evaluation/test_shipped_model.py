"""The model shipped inside the package: it loads with no network, and its committed Kodak results hold."""
import json
import os

import pytest
import torch

import lvae
from lvae.bdrate.__main__ import main as bdrate_main
from lvae.checkpoint import sha256_file
from lvae.evaluation import evaluate_bound
from lvae.models.registry import pretrained_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, 'results', 'rd_model_small-kodak.json')


@pytest.fixture(scope='module')
def results():
    with open(RESULTS) as f:
        return json.load(f)


def test_shipped_weights_load_offline_and_are_small():
    entry = pretrained_cfg('rd_model_small')
    path = entry['source']
    assert os.path.getsize(path) < 10e6
    assert sha256_file(path) == entry['sha256']
    model = lvae.get_model('rd_model_small', pretrained=True)
    random_init = lvae.get_model('rd_model_small')
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), random_init.state_dict().values()))


def test_shipped_curve_is_monotone(results):
    bpp, psnr = results['results']['bpp'], results['results']['psnr']
    assert results['model'] == 'rd_model_small' and results['test-set'] == 'kodak'
    assert results['num_images'] == 24 and len(bpp) == len(psnr) == len(results['lambdas']) == 16
    assert all(b2 > b1 for b1, b2 in zip(bpp, bpp[1:])), bpp
    assert all(p2 > p1 for p1, p2 in zip(psnr, psnr[1:])), psnr
    assert results['weights_sha256'] == pretrained_cfg('rd_model_small')['sha256']


def test_shipped_results_hold_both_psnr_curves_intervals_and_the_previous_bound(results):
    curves = results['results']
    assert all(m < p for m, p in zip(curves['psnr_of_mean_mse'], curves['psnr']))
    assert all(len(entry['mse']) == 16 for entry in results['per_image'])
    intervals = results['intervals']
    assert (intervals['method'], intervals['level'], intervals['resamples'], intervals['seed']) == \
        ('percentile bootstrap over images', 0.95, 2000, 0)
    for key in ('bpp', 'psnr', 'psnr_of_mean_mse'):
        assert all(low < v < high for v, (low, high) in zip(curves[key], intervals[key])), key
    for anchor in ('vtm-18.0', 'yang-mandt-2022'):
        bd = results['bd_rate'][anchor]['psnr']
        assert bd['interval'][0] < bd['value'] < bd['interval'][1], anchor
    assert results['dataset']['name'] == 'kodak' and len(results['dataset']['files']) == 24
    assert results['weights'] == 'rd_model_small.pt' and not any(results['outside_lmb_range'])
    assert '"/' not in json.dumps(results)  # no absolute path of the machine that made it
    assert os.path.getsize(RESULTS.replace('.json', '.png')) > 20_000


def test_bdrate_cli_prints_the_shipped_results_interval_the_same_every_time(results, capsys):
    assert bdrate_main([RESULTS]) == 0
    first = capsys.readouterr().out
    assert bdrate_main([RESULTS]) == 0
    assert capsys.readouterr().out == first
    low, high = results['bd_rate']['vtm-18.0']['psnr']['interval']
    assert f'{results["bd_rate"]["vtm-18.0"]["psnr"]["value"]:+.2f} [{low:+.2f}, {high:+.2f}]' in first


def test_shipped_results_reproduce(results, kodak_dir):
    """Re-evaluating the first Kodak image (same seed, so the same posterior draws) gives the committed per-image
    figures; the tolerance covers floating-point differences between machines and thread counts."""
    model = lvae.get_model('rd_model_small', pretrained=True)
    committed = results['per_image'][:1]
    files = [os.path.join(kodak_dir, entry['file']) for entry in committed]
    again = evaluate_bound(model, files, lambdas=results['lambdas'], device='cpu', seed=results['seed'],
                           bpp_pixels=results['bpp_pixels'], progress=False)
    for old, new in zip(committed, again['per_image']):
        assert new['bpp'] == pytest.approx(old['bpp'], rel=1e-3), old['file']
        assert new['psnr'] == pytest.approx(old['psnr'], abs=1e-3), old['file']
