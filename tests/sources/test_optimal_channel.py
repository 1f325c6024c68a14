"""The bound calibrated against a channel of known rate: the optimal channel of a Gaussian source (reverse
water-filling, lvae.sources.optimal), evaluated like any model, lands on the true R(D); each known unit error,
injected into the evaluation, moves it off."""
import numpy as np
import pytest

from lvae.evaluation import bound, evaluate_bound
from lvae.evaluation.intervals import bootstrap
from lvae.evaluation.results import per_image_figures
from lvae.sources import GaussianField, OptimalChannel, excess, get_source
from lvae.sources.optimal import level_for_lambda
from lvae.sources.truth import on_the_truth

LAMBDAS = [4.0, 16.0, 64.0, 256.0, 1024.0, 2048.0]
# A field of another size (96: padded to 128 by the evaluation) and another spectrum and colour axes.
FIELD_96 = GaussianField(name='test-96', size=96, mean=[0.45, 0.5, 0.4],
                         basis=[[0.6, 0.8, 0.0], [0.8, -0.6, 0.0], [0.0, 0.0, 1.0]],
                         std=[0.07, 0.03, 0.02], alpha=[2.0, 3.0, 2.5], held_out_images=40, held_out_seed=7)


def calibration(field, lambdas=LAMBDAS):
    """Whether each point of the optimal channel of ``field``, evaluated through evaluate_bound, lies on the truth
    (:func:`lvae.sources.truth.on_the_truth`: within 1% where the true rate is at least 0.1 bpp, else a zero excess
    inside the point's 95% interval over images), and the true rates."""
    result = evaluate_bound(OptimalChannel(field), field, lambdas=lambdas, device='cpu', progress=False)
    truth, _, _ = excess(field, result['bpp'], result['psnr_of_mean_mse'])
    band = bootstrap(*per_image_figures(result), truth=field.rate_bpp)['excess']
    return on_the_truth(truth, result['bpp'], band), truth


@pytest.mark.parametrize('field', [get_source('gaussian-64'), FIELD_96], ids=['gaussian-64', 'test-96-padded'])
def test_the_optimal_channel_lands_on_the_true_rd(field):
    on, truth = calibration(field)
    assert all(on), list(zip(on, truth))
    assert sum(truth >= 0.1) >= 4   # the 1% check covers most of the curve


def test_the_channel_minimises_the_papers_loss_at_its_water_level():
    """Over the water level, the loss rate (nats / dimension) + lambda * MSE in the [-1, 1] scale of the exact R(D)
    is smallest at theta = 1 / (8 lambda)."""
    lam = get_source('gaussian-64').eigenvalues()
    for lmb in (4.0, 100.0, 2048.0):
        thetas = level_for_lambda(lmb) * np.exp(np.linspace(-1, 1, 41))
        loss = [np.maximum(0, 0.5 * np.log(lam / t)).mean() + lmb * 4 * np.minimum(t, lam).mean() for t in thetas]
        assert int(np.argmin(loss)) == 20


@pytest.mark.parametrize('error', ['bits counted as nats', 'bits per dimension', 'MSE on the [-1, 1] scale',
                                   'bits over the padded pixels'])
def test_each_unit_error_moves_the_channel_off_the_truth(monkeypatch, error):
    field = FIELD_96 if error == 'bits over the padded pixels' else get_source('gaussian-64')
    if error == 'bits counted as nats':
        monkeypatch.setattr(bound, 'BITS_PER_NAT', 1.0)
    elif error == 'bits per dimension':
        monkeypatch.setattr(bound, 'pixel_count', lambda h, w, bpp_pixels: 3 * h * w)
    elif error == 'MSE on the [-1, 1] scale':
        distortion = bound.distortion
        monkeypatch.setattr(bound, 'distortion', lambda model, x_hat, im: 4 * distortion(model, x_hat, im))
    else:
        pixel_count = bound.pixel_count
        monkeypatch.setattr(bound, 'pixel_count', lambda h, w, bpp_pixels: pixel_count(h, w, 'padded'))
    assert not all(calibration(field)[0])
