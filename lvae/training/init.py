"""Initialisations a training run may start from (:attr:`lvae.training.Recipe.init`); the model's own is the paper's."""
import torch
import torch.nn as nn

from lvae.layers import ConvNeXtAdaLNPatchDown
from lvae.models.rd.model import LatentVariableBlock


def stage_maps(model):
    """The linear maps a signal crosses between the stages of a :class:`~lvae.VariableRateLossyVAE`: the encoder's
    patch embedding and 2x patch down-samplings, the decoder's patch up-samplings and each latent's projection."""
    maps = [model.encoder.enc_blocks[0]]
    maps += [b.downsapmle for b in model.encoder.enc_blocks if isinstance(b, ConvNeXtAdaLNPatchDown)]
    for block in model.dec_blocks:
        maps.append(block.z_proj if isinstance(block, LatentVariableBlock) else block[0])
    return maps


@torch.no_grad()
def unit_gain_(model):
    """Re-draw the weights of :func:`stage_maps` from N(0, 1/fan_in), biases zero (in place; returns ``model``).

    PyTorch's default draws them from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which divides a signal's variance by 3
    at each map: the coarsest latent reaches the image through five of them, 3^-5 of its variance, so training
    starts by coding everything in the finest grid. At unit gain every latent starts with the same reach."""
    for conv in stage_maps(model):
        nn.init.normal_(conv.weight, 0.0, conv.weight[0].numel() ** -0.5)
        nn.init.zeros_(conv.bias)
    return model


def initialise_(model, init):
    """Apply the recipe's ``init`` (``'default'``: nothing; ``'unit-gain'``: :func:`unit_gain_`) to a new model."""
    return unit_gain_(model) if init == 'unit-gain' else model
