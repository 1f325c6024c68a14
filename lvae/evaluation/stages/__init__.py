"""Where the rate goes: the KL of each stage of the decoder (its latents at one resolution, 1/64 ... 1/4 of the
image's side, top-down) and how many of their channels carry any, the diagnostic of a hierarchy whose coarse
latents collapsed (NVAE's active units)."""
import math

import torch

from lvae.evaluation.bound import pad_to_multiple
from lvae.evaluation.refine import noise_from

ACTIVE_NATS = 0.01  # a latent channel is active where its KL, averaged over images and positions, exceeds this (nats)


def stage_sides(model):
    """The side of each decoder stage's latents relative to the image's, top-down: ``['1/64', ..., '1/4']``."""
    stages = len(model.config.dec_nums)
    return [f'1/{4 * 2 ** (stages - 1 - j)}' for j in range(stages)]


def stage_rates(model, images, lambdas, seed=0, threshold=ACTIVE_NATS):
    """The rate of each decoder stage of ``model`` on ``images`` (an iterable of (3, H, W) tensors in [0, 1], each
    padded to a multiple of 64) at each of ``lambdas``, one seeded posterior draw per image and lambda.

    Returns ``{'lambdas', 'sides', 'bpp', 'active', 'units'}``: ``bpp[l][s]`` the KL of stage s in bits per image
    pixel (padded pixels included, as the model codes them), ``active[l][s]`` its channels whose KL averaged over
    the images and positions exceeds ``threshold`` nats, of ``units[s]`` channels. The model is left as it was."""
    blocks_per_stage = list(model.config.dec_nums)
    stage_of = [s for s, n in enumerate(blocks_per_stage) for _ in range(n)]
    lmb = torch.tensor([float(v) for v in lambdas])
    by_channel, pixels, positions = None, 0, None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i, im in enumerate(images):
            padded = pad_to_multiple(im.unsqueeze(0).to(device)).expand(len(lambdas), -1, -1, -1)
            gens = [torch.Generator(device).manual_seed(seed + 1000 * i + j) for j in range(len(lambdas))]
            with torch.inference_mode():
                _, stats = model.forward_end2end(padded, lmb.to(device), noise=noise_from(gens))
            kl = [s['kl'].double() for s in stats]                                  # (L, Z, h, w) nats
            sums = [k.sum(dim=(2, 3)).cpu() for k in kl]                             # (L, Z) per block
            count = [k.shape[2] * k.shape[3] for k in kl]
            by_channel = sums if by_channel is None else [a + s for a, s in zip(by_channel, sums)]
            positions = count if positions is None else [a + c for a, c in zip(positions, count)]
            pixels += padded.shape[2] * padded.shape[3]
    finally:
        model.train(was_training)
    if by_channel is None:
        raise ValueError('stage_rates needs at least one image')
    nats = [[0.0] * len(blocks_per_stage) for _ in lambdas]
    active = [[0] * len(blocks_per_stage) for _ in lambdas]
    units = [0] * len(blocks_per_stage)
    for b, (sums, n) in enumerate(zip(by_channel, positions)):
        units[stage_of[b]] += sums.shape[1]
        for j in range(len(lambdas)):
            nats[j][stage_of[b]] += float(sums[j].sum())
            active[j][stage_of[b]] += int((sums[j] / n > threshold).sum())
    return {'lambdas': [float(v) for v in lambdas], 'sides': stage_sides(model),
            'bpp': [[v / math.log(2) / pixels for v in row] for row in nats], 'active': active, 'units': units}


def stage_lines(rates):
    """A line per lambda: each stage's bits per pixel and its active units (of all), coarse to fine."""
    return [f'lambda {lmb:g}: ' + ', '.join(f'{side} {bpp:.4f} bpp ({a}/{u})' for side, bpp, a, u in
                                            zip(rates['sides'], row, act, rates['units']))
            for lmb, row, act in zip(rates['lambdas'], rates['bpp'], rates['active'])]
