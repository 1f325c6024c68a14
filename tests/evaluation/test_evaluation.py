"""evaluate_bound: bpp conventions, per-image MSE and both PSNR curves, lambdas outside the trained range, bad
files, seeding, samples, compile."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lvae
from lvae.evaluation import InvalidImagesError, compile_for_eval, evaluate_bound, lambda_grid
from lvae.evaluation.bound import noise_from, _seed, tf32
from lvae.data.images import load_image

LAMBDAS = [8.0, 512.0]


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return lvae.get_model('rd_model_tiny').eval()


@pytest.fixture(scope='module')
def odd_size_image(tmp_path_factory):
    """A 77x131 RGB image (neither side a multiple of 64)."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 1, 131)[None, :, None] * np.linspace(0.2, 1, 77)[:, None, None]
    arr = np.clip(255 * (x * [1.0, 0.6, 0.3] + 0.1 * rng.random((77, 131, 3))), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp('odd') / 'odd-131x77.png'
    Image.fromarray(arr).save(path)
    return str(path)


def reference_bits_and_psnr(model, path, lmb, seed=0):
    """Written from the spec: replicate-pad to 128x192, KL of the whole padded image in bits, PSNR over the
    original pixels."""
    im = load_image(path)[None]
    padded = F.pad(im, (0, 192 - 131, 0, 128 - 77), mode='replicate')
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        x_hat, stats = model.forward_end2end(padded, torch.tensor([lmb]), noise=noise_from([gen]))
    bits = sum(s['kl'].sum().item() for s in stats) / math.log(2)
    rec = (x_hat.clamp(-1, 1) * 0.5 + 0.5)[:, :, :77, :131]
    return bits, -10 * math.log10((rec - im).square().mean().item())


def test_bpp_divides_the_padded_images_bits_by_original_or_padded_pixels(tiny, odd_size_image):
    original = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', progress=False)
    padded = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', bpp_pixels='padded', progress=False)
    for j, lmb in enumerate(LAMBDAS):
        bits, psnr = reference_bits_and_psnr(tiny, odd_size_image, lmb, seed=_seed(0, 0, 0, j))
        assert original['bpp'][j] == pytest.approx(bits / (77 * 131), rel=1e-5)
        assert padded['bpp'][j] == pytest.approx(bits / (128 * 192), rel=1e-5)
        assert original['psnr'][j] == pytest.approx(psnr, abs=1e-4)
        assert padded['psnr'][j] == original['psnr'][j]
    assert original['per_image'][0]['height'] == 77 and original['per_image'][0]['width'] == 131
    assert original['bpp_pixels'] == 'original' and padded['bpp_pixels'] == 'padded'


def test_per_image_mse_gives_both_psnr_curves(tiny, odd_size_image, kodak_dir):
    files = [odd_size_image, os.path.join(kodak_dir, 'kodim07.png')]
    r = evaluate_bound(tiny, files, LAMBDAS, device='cpu', progress=False)
    mse = np.array([p['mse'] for p in r['per_image']])
    assert np.array([p['psnr'] for p in r['per_image']]) == pytest.approx(-10 * np.log10(mse))
    assert r['psnr'] == pytest.approx(np.mean(-10 * np.log10(mse), axis=0).tolist())
    assert r['psnr_of_mean_mse'] == pytest.approx((-10 * np.log10(mse.mean(0))).tolist())
    assert all(a < b for a, b in zip(r['psnr_of_mean_mse'], r['psnr']))  # two different images: Jensen's gap
    assert r['draws'] is None and r['outside_lmb_range'] == [False, False] and r['lmb_range'] == [4.0, 2048.0]


def test_lambdas_outside_the_trained_range_are_evaluated_with_a_warning(tiny, odd_size_image):
    with pytest.warns(UserWarning, match=r'lambdas \[2.0, 4096.0\] are outside .* lmb_range \[4.0, 2048.0\]'):
        r = evaluate_bound(tiny, [odd_size_image], [2.0, 64.0, 4096.0], device='cpu', progress=False)
    assert r['outside_lmb_range'] == [True, False, True]
    assert np.isfinite(r['bpp']).all() and np.isfinite(r['psnr']).all()


def test_results_do_not_depend_on_lambda_batching(tiny, odd_size_image):
    a = evaluate_bound(tiny, [odd_size_image], LAMBDAS + [64.0], device='cpu', lmb_batch=1, progress=False)
    b = evaluate_bound(tiny, [odd_size_image], LAMBDAS + [64.0], device='cpu', lmb_batch=3, progress=False)
    assert a['bpp'] == pytest.approx(b['bpp'], rel=1e-5) and a['psnr'] == pytest.approx(b['psnr'], abs=1e-4)


def test_draws_made_on_cpu_generators_are_the_draws_of_the_device_mode_on_a_cpu(tiny, odd_size_image):
    """On a CPU both noise modes make the same draws, seeded per (seed, draw, image, lambda); the mode is
    recorded."""
    a = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', noise='device', progress=False)
    b = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', noise='cpu', progress=False)
    assert (a['noise'], b['noise']) == ('device', 'cpu')
    assert a['bpp'] == b['bpp'] and a['psnr'] == b['psnr']
    bits, psnr = reference_bits_and_psnr(tiny, odd_size_image, LAMBDAS[0], seed=_seed(0, 0, 0, 0))
    assert a['per_image'][0]['bpp'][0] == pytest.approx(bits / (77 * 131), rel=1e-5)


def test_samples_report_a_standard_deviation(tiny, odd_size_image):
    one = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', progress=False)
    three = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', samples=3, progress=False)
    other = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', seed=1, progress=False)
    assert one['bpp_std'] is None and one['samples'] == 1
    assert len(three['bpp_std']) == 2 and all(s > 0 for s in three['bpp_std'])
    assert np.array(three['draws']['bpp']).shape == (3, 2)
    assert np.mean(three['draws']['bpp'], axis=0) == pytest.approx(three['bpp'])
    assert np.std(three['draws']['psnr'], axis=0, ddof=1) == pytest.approx(three['psnr_std'])
    assert three['bpp'][0] != one['bpp'][0] and other['bpp'][0] != one['bpp'][0]
    # the mean of 3 draws is within a few standard deviations of one draw
    assert abs(three['bpp'][0] - one['bpp'][0]) < 6 * three['bpp_std'][0] * math.sqrt(3)


def test_bad_files_stop_the_evaluation_with_their_names(tiny, odd_dir):
    with pytest.raises(InvalidImagesError) as info:
        evaluate_bound(tiny, odd_dir, [64.0], device='cpu', progress=False)
    names = sorted(os.path.basename(e.path) for e in info.value.errors)
    assert names == ['not-an-image.png', 'truncated.png']
    assert 'truncated.png' in str(info.value) and '--skip-invalid' in str(info.value)


def test_skip_invalid_evaluates_every_usable_odd_image(tiny, odd_dir):
    r = evaluate_bound(tiny, odd_dir, [64.0], device='cpu', skip_invalid=True, progress=False)
    done = {p['file']: (p['height'], p['width']) for p in r['per_image']}
    assert set(done) == {'gray-L-256.png', 'gray16-200x120.png', 'odd-131x77.png', 'palette-P-512.png',
                         'rgba-192x128.png', 'tiny-24x16.png'}
    assert done['tiny-24x16.png'] == (16, 24) and done['odd-131x77.png'] == (77, 131)
    assert sorted(s['file'] for s in r['skipped']) == ['not-an-image.png', 'truncated.png']  # names, not paths
    assert all(np.isfinite(p['bpp']).all() and np.isfinite(p['psnr']).all() for p in r['per_image'])


def test_arguments_are_checked(tiny, odd_size_image):
    for kwargs, match in [({'bpp_pixels': 'both'}, 'bpp_pixels'), ({'samples': 0}, 'samples'),
                          ({'amp': 'fp16'}, 'amp'), ({'lambdas': [0.0, 1.0]}, 'positive'),
                          ({'noise': 'gpu'}, "noise must be one of .*'gpu'")]:
        with pytest.raises(ValueError, match=match):
            evaluate_bound(tiny, [odd_size_image], **{'lambdas': LAMBDAS, **kwargs}, progress=False)
    with pytest.raises(ValueError, match='unknown dataset'):
        evaluate_bound(tiny, 'no-such-dataset', LAMBDAS, progress=False)


def test_lambda_grid_is_log_spaced_with_both_ends():
    grid = lambda_grid((4, 2048), 16)
    assert len(grid) == 16 and grid[0] == pytest.approx(4) and grid[-1] == pytest.approx(2048)
    assert np.diff(np.log(grid)) == pytest.approx([math.log(512) / 15] * 15)
    with pytest.raises(ValueError):
        lambda_grid((0, 10), 4)


@pytest.mark.slow
def test_compile_for_eval_keeps_results_and_falls_back_when_compiling_fails(odd_size_image):
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny').eval()
    eager = evaluate_bound(model, [odd_size_image], LAMBDAS, device='cpu', progress=False)
    keys = list(model.state_dict())
    assert compile_for_eval(model, backend='eager') is True
    compiled = evaluate_bound(model, [odd_size_image], LAMBDAS, device='cpu', progress=False)
    assert compiled['bpp'] == pytest.approx(eager['bpp'], rel=1e-5)
    assert list(model.state_dict()) == keys

    def broken(gm, example_inputs):
        raise RuntimeError('no C++ compiler here')

    torch._dynamo.reset()
    fresh = lvae.get_model('rd_model_tiny').eval()
    fresh.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match='torch.compile failed'):
        assert compile_for_eval(fresh, backend=broken) is False
    again = evaluate_bound(fresh, [odd_size_image], LAMBDAS, device='cpu', progress=False)
    assert again['bpp'] == pytest.approx(eager['bpp'], rel=1e-5)


def test_tf32_is_off_inside_evaluation_and_the_global_flags_come_back(tiny, odd_size_image):
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = matmul.allow_tf32, cudnn.allow_tf32
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = True
        with tf32(False):
            inside = matmul.allow_tf32, cudnn.allow_tf32
        assert inside == (False, False)
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
        res = evaluate_bound(tiny, [odd_size_image], LAMBDAS, device='cpu', progress=False)
        assert res['tf32'] is False and (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved
