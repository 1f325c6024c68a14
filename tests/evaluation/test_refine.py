"""Posterior refinement (lvae.evaluation.refine): each lambda's loss falls below the plain evaluation's, the bound is
drawn with the evaluation's seeds (so zero steps is the plain bound and a re-run the same result), the prepared CPU
model refines as the reference does, and the model is given back as it came."""
import copy

import numpy as np
import pytest
import torch

import lvae
from lvae import accel
from lvae.evaluation import evaluate_bound
from lvae.evaluation.bound import noise_from, pad_to_multiple
from lvae.evaluation.refine import Refinement, latent_blocks, refine_posteriors
from lvae.sources import get_source

LAMBDAS = [8.0, 64.0, 512.0, 2048.0]


@pytest.fixture(scope='module')
def model():
    return lvae.get_model('rd_model_small', pretrained=True)


@pytest.fixture(scope='module')
def images():
    return get_source('gaussian-64').held_out()[:4]


def mean_loss(result):
    """Per lambda: rate (nats per dimension) + lambda * MSE in the [-1, 1] scale, the mean over images."""
    bpp = np.array([r['bpp'] for r in result['per_image']])
    mse = np.array([r['mse'] for r in result['per_image']])
    return (bpp * np.log(2) / 3 + np.array(result['lambdas']) * 4 * mse).mean(0)


def test_refinement_lowers_the_loss_at_every_lambda_and_is_recorded(model, images):
    plain = evaluate_bound(model, images, lambdas=LAMBDAS, device='cpu', progress=False)
    refined = evaluate_bound(model, images, lambdas=LAMBDAS, device='cpu', progress=False, refine=20)
    assert (mean_loss(refined) < mean_loss(plain)).all(), (mean_loss(refined), mean_loss(plain))
    assert plain['refine'] is None
    assert refined['refine']['steps'] == 20 and refined['refine']['lr'] == Refinement.lr
    assert 'offsets' in refined['refine']['parametrisation']


def test_zero_steps_is_the_plain_bound_and_a_rerun_gives_the_same_result(model, images):
    plain = evaluate_bound(model, images, lambdas=LAMBDAS, device='cpu', progress=False)
    none = evaluate_bound(model, images, lambdas=LAMBDAS, device='cpu', progress=False, refine=0)
    assert none['bpp'] == plain['bpp'] and none['psnr'] == plain['psnr']
    a, b = (evaluate_bound(model, images[:2], lambdas=LAMBDAS[:2], device='cpu', progress=False, refine=3)
            for _ in range(2))
    assert a['bpp'] == b['bpp'] and a['psnr'] == b['psnr']


def test_the_model_is_given_back_as_it_came(model, images):
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    evaluate_bound(model, images[:1], lambdas=LAMBDAS[:1], device='cpu', progress=False, refine=2)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(not b.posterior._forward_hooks for b in latent_blocks(model))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(model.dec_blocks[0].resnet_front) is lvae.layers.ConvNeXtBlockAdaLN   # not left prepared


def test_the_prepared_cpu_model_refines_as_the_reference(model, images):
    """The prepared blocks' training arrangement (folds, the C++ depthwise gradient) carries the gradients of the
    posterior offsets as the reference blocks do."""
    im = images[:1]
    lmb = torch.tensor(LAMBDAS[:2])
    padded = pad_to_multiple(im).expand(2, -1, -1, -1)
    offsets = []
    for prepared in (False, True):
        m = copy.deepcopy(model)
        if prepared:
            accel.prepare(m, 'cpu')
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        offsets.append(refine_posteriors(m, padded, im, lmb, Refinement(3), noise_from(gens)))
    ref, fast = (torch.cat([o.flatten() for o in found]) for found in offsets)
    # Adam's first steps are +-lr per element whatever the gradient's size: where a gradient is float rounding's
    # size, its sign can differ between the two forms; the offsets as a whole agree
    assert (fast - ref).norm() <= 1e-3 * ref.norm() and ref.norm() > 0


def test_a_model_without_posteriors_has_nothing_to_refine(images):
    channel = lvae.get_model('gaussian-64-optimal')
    with pytest.raises(ValueError, match='has no posterior to refine'):
        evaluate_bound(channel, images[:1], lambdas=LAMBDAS[:1], device='cpu', progress=False, refine=2)


def test_the_bound_is_drawn_with_the_evaluations_seeds_never_the_optimisations(monkeypatch, model, images):
    """The refined point is an unbiased estimate only from draws the optimisation did not see: the bound's seeds
    are the plain evaluation's, the refinement's are others; a refinement that moves nothing gives the plain point."""
    from lvae.evaluation import bound
    calls, real = [], bound.bound_of_image

    def spy(model, im, lambdas, seeds, **kw):
        calls.append((list(seeds), list(kw['refine_seeds'])))
        return real(model, im, lambdas, seeds, **kw)
    monkeypatch.setattr(bound, 'bound_of_image', spy)
    plain = evaluate_bound(model, images[:2], lambdas=LAMBDAS[:2], device='cpu', progress=False)
    still = evaluate_bound(model, images[:2], lambdas=LAMBDAS[:2], device='cpu', progress=False,
                           refine=Refinement(2, lr=1e-9))
    assert calls[2][0] == calls[0][0] and calls[3][0] == calls[1][0]   # per image, the plain evaluation's seeds
    assert not {s for c in calls[2:] for s in c[0]} & {s for c in calls[2:] for s in c[1]}
    assert still['bpp'] == pytest.approx(plain['bpp'], rel=1e-5)
    assert still['psnr'] == pytest.approx(plain['psnr'], abs=1e-4)
