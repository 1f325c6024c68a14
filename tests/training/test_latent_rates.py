"""The options for coarse latents that stay unused, each on for the first updates only: NVAE's balancing of the
latents' KL and free bits (lvae.training.recipe.LatentRates)."""
import pytest
import torch

from lvae.training.recipe import LatentRates, Recipe


def maps(*means, size=(2, 4, 3, 3)):
    """One KL map per latent, each element ``mean`` (nats), with gradients."""
    return [torch.full(size, m, requires_grad=True) for m in means]


def test_the_options_act_for_their_updates_then_the_bounded_objective_is_trained():
    recipe = Recipe(iterations=100, kl_balance=10, free_bits=0.1, free_bits_until=20)
    assert isinstance(recipe.kl_weight(9), LatentRates) and recipe.kl_weight(9).balance
    assert isinstance(recipe.kl_weight(10), LatentRates) and not recipe.kl_weight(10).balance
    assert recipe.kl_weight(20) == 1 and Recipe(iterations=100).kl_weight(0) == 1   # off by default
    with pytest.raises(ValueError, match='--free_bits and --free_bits_until go together'):
        Recipe(free_bits=0.1)


def test_free_bits_charge_the_floor_without_gradient_below_it_and_the_kl_above_it():
    kl = maps(0.01, 0.5)
    rate = LatentRates(1.0, floor=0.1)(kl)
    elements = 4 * 3 * 3
    assert torch.allclose(rate, torch.full((2,), 0.1 * elements + 0.5 * elements))
    rate.sum().backward()
    assert kl[0].grad.abs().sum() == 0 and torch.allclose(kl[1].grad, torch.ones_like(kl[1]))


def test_balancing_weighs_a_latent_by_how_much_it_carries_and_keeps_the_mean_weight():
    same = maps(0.2, 0.2)
    assert torch.allclose(LatentRates(1.0, balance=True)(same), LatentRates(1.0)(same))  # equal latents: the sum
    kl = maps(0.001, 1.0)   # a collapsed latent beside a used one, of one size
    rate = LatentRates(1.0, balance=True)(kl)
    rate.sum().backward()
    low, high = float(kl[0].grad[0, 0, 0, 0]), float(kl[1].grad[0, 0, 0, 0])
    assert low < 0.1 * high and low + high == pytest.approx(2.0)   # the weights are detached, their mean is 1
    assert torch.allclose(LatentRates(0.5, balance=True)(kl), 0.5 * rate.detach())   # then the warm-up's beta
