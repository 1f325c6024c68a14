"""Bad input to the model gets a clear error, never a silent wrong number."""
import math

import pytest
import torch

import lvae


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return lvae.get_model('rd_model_tiny').eval()


@pytest.mark.parametrize('im, message', [
    (torch.rand(3, 64, 64), r'shape \(B, 3, H, W\)'),
    (torch.rand(1, 1, 64, 64), r'shape \(B, 3, H, W\)'),
    (torch.rand(1, 3, 64, 96), 'multiples of 64'),
    (torch.rand(1, 3, 64, 64) * 255, r'values must be in \[0, 1\]'),
    (torch.rand(1, 3, 64, 64) - 0.5, r'values must be in \[0, 1\]'),
    (torch.full((1, 3, 64, 64), float('nan')), r'values must be in \[0, 1\]'),
    ((torch.rand(1, 3, 64, 64) * 255).to(torch.uint8), 'float image'),
])
def test_bad_images(model, im, message):
    with pytest.raises(ValueError, match=message):
        model(im, lmb=torch.tensor([64.0] * im.shape[0]) if im.dim() == 4 else 64.0)


@pytest.mark.parametrize('lmb, message', [
    (torch.tensor([0.0]), '> 0'),
    (torch.tensor([-4.0]), '> 0'),
    (torch.tensor([float('inf')]), 'finite'),
    (torch.tensor([4.0, 8.0]), r'shape \[1\]'),
])
def test_bad_lambdas(model, lmb, message):
    with pytest.raises(ValueError, match=message):
        model(torch.rand(1, 3, 64, 64), lmb=lmb)


def test_scalar_lambda_is_broadcast(model):
    im = torch.rand(2, 3, 64, 64)
    torch.manual_seed(1)
    a = model(im, lmb=64.0)
    torch.manual_seed(1)
    b = model(im, lmb=torch.tensor([64.0, 64.0]))
    assert a['loss'].item() == b['loss'].item()


def test_training_lambdas_are_log_uniform_in_range(model):
    torch.manual_seed(0)
    lmb = model.sample_lmb(20000)
    low, high = model.config.lmb_range
    assert lmb.min() >= low and lmb.max() <= high
    # log-uniform: the median of log(lambda) sits in the middle of the log range
    assert abs(lmb.log().median().item() - (math.log(low) + math.log(high)) / 2) < 0.1


def test_loss_is_rate_plus_lambda_distortion(model):
    im = torch.rand(2, 3, 64, 128)
    lmb = torch.tensor([16.0, 512.0])
    torch.manual_seed(3)
    out = model(im, lmb=lmb)
    torch.manual_seed(3)
    x_hat, stats = model.forward_end2end(im, lmb)
    rate = model.kl_per_image(stats) / im[0].numel()
    mse = (x_hat - (im * 2 - 1)).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(out['loss'], (rate + lmb * mse).mean())
    assert out['bppix'] == pytest.approx(rate.mean().item() * 3 / math.log(2), rel=1e-6)
    assert len(stats) == model.num_latents and all(s['kl'].shape[0] == 2 for s in stats)


def test_gradients_are_finite_at_zero_means():
    from lvae.layers import smooth_mean
    x = torch.tensor([0.0, 1e-30, -2.0, 6.0, 7.5, -100.0], requires_grad=True)
    y = smooth_mean(x)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert y[0].item() == 0.0
    assert y[4].item() == pytest.approx(math.sqrt(7.5 + 1e-8))
    assert y[2].item() == pytest.approx(-(2.0 ** (1 - 0.5 * math.tanh(2.0))))


def test_conditional_sample_with_given_latents(model):
    torch.manual_seed(0)
    im = torch.rand(1, 3, 128, 128)
    _, stats = model.forward_end2end(im, 64.0, get_latents=True)
    latents = [s['z'] for s in stats]
    a = model.conditional_sample(64.0, latents, bhw_repeat=(1, 2, 2))
    b = model.conditional_sample(64.0, latents, bhw_repeat=(1, 2, 2))
    assert a.shape == (1, 3, 128, 128) and torch.equal(a, b)  # all latents given: deterministic
    assert 0 <= a.min() and a.max() <= 1
