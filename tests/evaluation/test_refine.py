"""Posterior refinement (lvae.evaluation.refine): each lambda's loss falls below the plain evaluation's, the bound is
drawn with the evaluation's seeds (so zero steps is the plain bound and a re-run the same result), the prepared CPU
model refines as the reference does, and the model is given back as it came."""
import copy
import os

import pytest
import torch

import lvae
from lvae import accel
from lvae.evaluation import evaluate_bound
from lvae.evaluation.bound import pad_to_multiple
from lvae.evaluation.refine import (FIXED_LR, Convergence, Refinement, latent_blocks, refine_chain,
                                   refine_posteriors)
from lvae.evaluation.results import mean_objective
from lvae.models import load_model
from lvae.sources import get_source

LAMBDAS = [8.0, 64.0, 512.0, 2048.0]


STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'results',
                     'gaussian-64-study', 'rd_model_tiny.pt')


@pytest.fixture(scope='module')
def model():
    """rd_model_tiny trained on gaussian-64 (the study's): a trained posterior at a tenth of rd_model_small's cost."""
    return load_model(weights=STUDY).model


@pytest.fixture(scope='module')
def images():
    return get_source('gaussian-64').held_out()[:4]


def test_refinement_lowers_the_loss_at_every_lambda_and_is_recorded(model, images):
    plain = evaluate_bound(model, images, lambdas=LAMBDAS, device='cpu', progress=False)
    refined = evaluate_bound(model, images, lambdas=LAMBDAS, device='cpu', progress=False, refine=20)
    assert (mean_objective(refined) < mean_objective(plain)).all(), (mean_objective(refined), mean_objective(plain))
    assert plain['refine'] is None
    assert refined['refine']['steps'] == 20 and refined['refine']['lr'] == FIXED_LR
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
        offsets.append(refine_posteriors(m, padded, im, lmb, Refinement(3), gens)[0])
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


def test_the_convergence_rule_cuts_the_rate_on_a_plateau_and_stops_after_its_cuts():
    rule, optimiser = Convergence(), torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.03)
    flat = rule.tracker()
    stops = [flat.update(1.0, optimiser) for _ in range(200)]
    # the first gain is measured at the second window: a plateau there cuts, each next window cuts, then it stops
    assert stops.index(True) + 1 == 4 * rule.window
    assert optimiser.param_groups[0]['lr'] == pytest.approx(0.03 * rule.factor ** rule.cuts)
    falling = rule.tracker()
    assert not any(falling.update(0.99 ** t, optimiser) for t in range(300))
    assert falling.cut == 0   # a falling loss runs on, to max_steps at most
    capped = Convergence(max_steps=50).tracker()
    assert [capped.update(0.99 ** t, optimiser) for t in range(50)].index(True) == 49


def test_a_rule_with_a_tail_stops_its_windows_after_the_last_cut_without_waiting_for_a_plateau():
    optimiser = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.03)
    rule = Convergence(tail=1)
    losses = [1.0] * (3 * rule.window) + [0.99 ** t for t in range(300)]   # flat to the last cut, then falling
    waits, stops = Convergence().tracker(), rule.tracker()
    assert not any(waits.update(v, optimiser) for v in losses[:rule.max_steps])   # a falling loss runs on
    assert [stops.update(v, optimiser) for v in losses].index(True) + 1 == 4 * rule.window
    longer = Convergence(tail=3).tracker()
    assert [longer.update(v, optimiser) for v in losses].index(True) + 1 == 6 * rule.window
    warm = rule.tracker(warm=True)   # one cut taken already: the next plateau cuts, one window more
    assert [warm.update(1.0, optimiser) for _ in range(200)].index(True) + 1 == 3 * rule.window
    for tail in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f'tail >= 0, got tail {tail}'):
            Convergence(tail=tail)


def test_a_rule_with_a_tail_gives_the_mean_of_the_last_windows_iterates(model, images):
    im, lmb = images[:1], torch.tensor([64.0])
    rule = dict(window=2, tol=1.0, max_steps=100)   # every window a plateau: cuts after steps 4 and 6, stops at 8
    seen = {}

    def record(items):
        seen[items[0].steps] = [o.detach().clone() for o in items[0].offsets]
    last, steps = refine_posteriors(model, pad_to_multiple(im), im, lmb, Refinement('auto', rule=Convergence(**rule)),
                                    [torch.Generator().manual_seed(5)], on_step=record)
    mean, mean_steps = refine_posteriors(model, pad_to_multiple(im), im, lmb,
                                         Refinement('auto', rule=Convergence(tail=1, **rule)),
                                         [torch.Generator().manual_seed(5)])
    assert steps == mean_steps == [8]
    for block, (a, b) in enumerate(zip(mean, last)):
        torch.testing.assert_close(a, (seen[7][block] + b) / 2)
        assert not torch.equal(a, b)


def test_each_item_stops_by_its_own_rule_whatever_is_refined_beside_it(model, images):
    """An image and lambda refined with others takes the steps, and reaches the offsets, it does alone: its rule
    watches its own loss and it leaves the batch when it stops."""
    refinement = Refinement('auto', rule=Convergence(window=3, tol=0.01, max_steps=60))
    im = images[:2]
    lmb = torch.tensor([4.0, 2048.0])
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    together, steps = refine_posteriors(model, pad_to_multiple(im), im, lmb, refinement, gens)
    alone = [refine_posteriors(model, pad_to_multiple(im[k:k + 1]), im[k:k + 1], lmb[k:k + 1], refinement,
                               [torch.Generator().manual_seed(7 + k)]) for k in range(2)]
    assert steps == [a[1][0] for a in alone]
    assert steps[0] != steps[1]   # they stopped apart: the first to stop left the batch
    for i, offsets in enumerate(together):
        for k in range(2):
            torch.testing.assert_close(offsets[k:k + 1], alone[k][0][i], rtol=1e-4, atol=1e-5)


def test_auto_refinement_gives_the_same_figures_however_lambdas_are_batched(model, images):
    kw = dict(lambdas=LAMBDAS, device='cpu', progress=False,
              refine=Refinement('auto', rule=Convergence(window=3, tol=0.02, max_steps=30)))
    one, four = (evaluate_bound(model, images[:1], lmb_batch=n, **kw) for n in (1, 4))
    assert one['per_image'][0]['refine_steps'] == four['per_image'][0]['refine_steps']
    assert one['bpp'] == pytest.approx(four['bpp'], rel=1e-5)
    assert one['psnr'] == pytest.approx(four['psnr'], abs=1e-4)


def test_auto_refinement_lowers_the_loss_and_records_its_rule_and_steps(model, images):
    plain = evaluate_bound(model, images[:1], lambdas=LAMBDAS[::2], device='cpu', progress=False)
    auto = evaluate_bound(model, images[:1], lambdas=LAMBDAS[::2], device='cpu', progress=False, refine='auto')
    assert (mean_objective(auto) < mean_objective(plain)).all(), (mean_objective(auto), mean_objective(plain))
    assert auto['refine']['steps'] == 'auto' and auto['refine']['lr'] == Convergence.lr
    assert auto['refine']['rule']['tol'] == Convergence.tol
    steps = [s for r in auto['per_image'] for s in r['refine_steps']]
    assert all(4 * Convergence.window <= s <= Convergence.max_steps for s in steps), steps


def test_a_given_rule_decides_when_auto_stops_and_is_recorded(model, images):
    with pytest.raises(ValueError, match="a convergence rule goes with steps='auto', not steps=30"):
        Refinement(30, rule=Convergence())
    short = Refinement('auto', rule=Convergence(window=2, tol=1.0, max_steps=100))   # every window a plateau
    assert short.lr == Convergence.lr and short.record(0)['rule']['window'] == 2
    im = images[:1]
    for _ in range(2):   # the rule given is a template: each refinement counts afresh
        _, steps = refine_posteriors(model, pad_to_multiple(im), im, torch.tensor([64.0]), short, [torch.Generator()])
        assert steps == [4 * 2]   # the second window's gain cuts, two more cuts, then it stops


def test_a_chain_starts_each_lambda_from_the_one_below_after_the_first_cut(model, images):
    """Convergence(chain=True): the lowest lambda is refined as without the chain (the same draws, the same steps and
    offsets); each higher one starts from the offsets of the one below, at the rate after the first cut, with the
    cuts left; the draws of a lambda are continued draw by draw (what it saves: benchmarks/refine_convergence.py)."""
    im = images[:1]
    lmb = torch.tensor([4.0, 64.0, 4.0, 64.0])   # two draws at each of two lambdas
    rule = dict(window=3, tol=0.01, max_steps=90)
    padded = pad_to_multiple(im).expand(4, -1, -1, -1)

    def gens():
        return [torch.Generator().manual_seed(s) for s in (1, 2, 3, 4)]
    cold, cold_steps = refine_posteriors(model, padded, im, lmb, Refinement('auto', rule=Convergence(**rule)), gens())
    chained, steps = refine_chain(model, padded, im, lmb, Refinement('auto', rule=Convergence(chain=True, **rule)),
                                  gens())
    assert [steps[0], steps[2]] == [cold_steps[0], cold_steps[2]]
    for block, offsets in enumerate(chained):
        torch.testing.assert_close(offsets[[0, 2]], cold[block][[0, 2]])
    start = []   # the 64's first step, from the 4's offsets of the same draw
    first = Convergence(chain=True, **rule)
    refine_posteriors(model, padded[:1], im, lmb[1:2], Refinement('auto', rule=first), gens()[1:2],
                      start=[o[0:1] for o in chained], on_step=lambda items: start.append(
                          items[0].optimiser.param_groups[0]['lr']) if items[0].steps == 1 else None)
    assert start == [pytest.approx(Convergence.lr * Convergence.factor)]
    with pytest.raises(ValueError, match='as many items at each lambda'):
        refine_chain(model, padded[:3], im, lmb[:3], Refinement('auto', rule=Convergence(chain=True)), gens()[:3])


def test_chained_refinement_gives_the_same_figures_however_lambdas_are_batched(model, images):
    kw = dict(lambdas=LAMBDAS, device='cpu', progress=False, samples=2,
              refine=Refinement('auto', rule=Convergence(chain=True, window=3, tol=0.02, max_steps=30)))
    one, four = (evaluate_bound(model, images[:1], lmb_batch=n, **kw) for n in (1, 4))
    assert one['per_image'][0]['refine_steps'] == four['per_image'][0]['refine_steps']
    assert one['bpp'] == pytest.approx(four['bpp'], rel=1e-5) and one['refine']['rule']['chain'] is True


def test_a_chain_starts_each_lambda_on_the_line_through_the_two_below_in_log_lambda(model, images, monkeypatch):
    from lvae.evaluation import refine
    starts, found, real = [], [], refine.refine_posteriors

    def recorded(*args, start=None, **kw):
        starts.append(start)
        found.append(real(*args, start=start, **kw)[0])
        return found[-1], [1] * len(args[3])
    monkeypatch.setattr(refine, 'refine_posteriors', recorded)
    im = images[:1]
    lmb = torch.tensor([4.0, 16.0, 128.0])   # log steps of 2 and 3 (in units of log 2)
    refine_chain(model, pad_to_multiple(im).expand(3, -1, -1, -1), im, lmb,
                 Refinement('auto', rule=Convergence(chain=True, window=2, max_steps=4)),
                 [torch.Generator().manual_seed(s) for s in range(3)])
    assert starts[0] is None and all(torch.equal(s, f) for s, f in zip(starts[1], found[0]))
    for s, a, b in zip(starts[2], found[0], found[1]):
        torch.testing.assert_close(s, b + 1.5 * (b - a))


def test_the_chain_flag_refines_by_the_chains_rule_and_records_it():
    from argparse import Namespace
    from dataclasses import asdict

    from lvae.evaluation.flags import refinement_of
    from lvae.evaluation.refine import CHAIN
    chained = refinement_of(Namespace(refine='auto', refine_lr=None, refine_chain=True))
    assert chained.rule == CHAIN and chained.rule.chain and chained.rule.tail == 3
    assert chained.record(0)['rule'] == asdict(Convergence(chain=True, window=15, tail=3))
    plain = refinement_of(Namespace(refine='auto', refine_lr=None, refine_chain=False))
    assert plain.rule == Convergence() and plain.record(0)['rule']['tail'] == 0
