"""Estimate the R(D) upper bound of a model on a set of images (the paper's evaluation).

Per image and lambda: pad to a multiple of 64 by edge replication, take the KL of the whole padded image
as its rate (bits = nats * log2 e), and PSNR in RGB on [0, 1] over the original pixels; average bpp and
PSNR over images. ``bpp_pixels='original'`` (default) divides bits by the original pixel count, which is
the correct bpp; ``'padded'`` divides by the padded count, as the authors' code did (it flatters images
whose sides are not multiples of 64, e.g. Tecnick 1200 -> 1216, by about 2-3%).
"""
import contextlib
import functools
import itertools
import math
import os
import time
import warnings
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lvae import accel
from lvae.evaluation.choices import BPP_PIXELS, NOISE
from lvae.evaluation.journal import WHOLE, Journal, image_digest, journal_settings
from lvae.evaluation.refine import Refinement, noise_from, posterior_offsets, refine_chain, refine_posteriors
from lvae.evaluation.results import dataset_curves, psnr
from lvae.evaluation.testsets import as_test_set
from lvae.models.rd.model import MAX_STRIDE

# Lambdas batched per forward on CPU: up to this many padded pixels, i.e. 4 lambdas of a Kodak image. 16 lambdas
# of one Kodak image ran 0.97-1.04x (rd_model_base on a 2-core Xeon, within the machine's noise), 1.08x (on a
# 2-core EPYC) and 1.15x (rd_model_small) as fast 4 per forward as 1 per forward; all 16 in one forward gained
# no more (benchmarks/HISTORY.md). More pixels per forward only cost memory: rd_model_base's forward of
# 4 x 768 x 512 peaks at 2.3 GB above the model (1 lambda: 0.63 GB).
CPU_PIXELS_PER_FORWARD = 4 * 512 * 768
BITS_PER_NAT = math.log2(math.e)
# Activation memory of an inference forward, bytes per padded pixel and lambda per unit of the config's width sum
# (:func:`forward_bytes`): 112 and 228 bytes per pixel measured for rd_model_tiny and rd_model_small (peak RSS, a
# 1024x1024 image, CPU); rd_model_base's 0.63 GB for a Kodak image comes out at 0.72 GB.
BYTES_PER_WIDTH = 34
LARGE_FORWARD = 2 * 2 ** 30  # a forward estimated above this is announced with its size before it runs
REFINE_STREAM = 1  # the refinement draws from seeds (seed, draw, image, lambda, REFINE_STREAM), never the bound's


def pixel_count(h, w, bpp_pixels):
    """The pixels that divide an image's bits (:data:`BPP_PIXELS`): its own, or those of its padded size."""
    return h * w if bpp_pixels == 'original' else (h + (-h) % MAX_STRIDE) * (w + (-w) % MAX_STRIDE)


def distortion(model, x_hat, im):
    """Per image: the MSE of the reconstruction of decoder output ``x_hat`` ([-1, 1] scale, (B, 3, H', W') padded)
    against ``im`` ((1, 3, H, W), [0, 1]), over the original pixels on the [0, 1] scale."""
    h, w = im.shape[2:]
    rec = model.process_output(x_hat.float())[:, :, :h, :w]
    return (rec - im).square().mean(dim=(1, 2, 3))


class InvalidImagesError(ValueError):
    """Some input files are not usable images; ``errors`` lists one :class:`ImageError` per file."""

    def __init__(self, errors, none_left=False):
        self.errors = list(errors)
        lines = '\n'.join(f'  {e}' for e in self.errors)
        way_out = ('none is left to evaluate: give a folder or files that hold images' if none_left else
                   'remove them, or skip them with --skip-invalid / skip_invalid=True')
        super().__init__(f'{len(self.errors)} file(s) are not usable images:\n{lines}\n({way_out})')


def default_device():
    """``cuda`` when present, else ``cpu``."""
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


@contextlib.contextmanager
def tf32(enabled):
    """TF32 for CUDA fp32 matmuls and cuDNN convolutions on or off inside the block (restored after)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pad_to_multiple(im, multiple=MAX_STRIDE):
    """(B, 3, H, W) -> (B, 3, H', W') with H', W' the next multiples, padded by edge replication."""
    h, w = im.shape[2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(im, (0, pw, 0, ph), mode='replicate') if ph or pw else im


def lambda_grid(lmb_range, steps):
    """``steps`` lambdas log-spaced over ``lmb_range`` (both ends included)."""
    low, high = (float(v) for v in lmb_range)
    if not 0 < low <= high or steps < 1:
        raise ValueError(f'need 0 < low <= high and steps >= 1, got range {lmb_range!r}, steps {steps}')
    return np.exp(np.linspace(math.log(low), math.log(high), steps)).tolist() if steps > 1 else [low]


def compile_for_eval(model, backend='inductor'):
    """``lvae.accel.prepare(model, compile=True, backend=backend)``; returns whether the blocks compiled (if not,
    a warning said why and evaluation runs eagerly, with the same results)."""
    return accel.is_compiled(accel.prepare(model, compile=True, backend=backend))


def _seed(*parts):
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0]) >> 1


class _BatchSizer:
    """How many lambdas of one image go into one forward: a pixel budget on CPU; on CUDA all at first,
    halved on out-of-memory and remembered."""

    def __init__(self, device, lmb_batch):
        self.device, self.fixed, self.cuda_limit = device, lmb_batch, None

    def size(self, n, pixels):
        if self.fixed not in (None, 'auto'):
            return max(1, min(n, int(self.fixed)))
        if self.device.type == 'cuda':
            return min(n, self.cuda_limit or n)
        return max(1, min(n, CPU_PIXELS_PER_FORWARD // pixels))

    def shrink(self, current):
        if self.device.type != 'cuda' or current == 1:
            return False
        self.cuda_limit = max(1, current // 2)
        torch.cuda.empty_cache()
        return True


def bound_of_image(model, im, lambdas, seeds, sizer=None, amp=None, noise='device', refinement=None,
                   refine_seeds=None, refine_steps=None):
    """KL bits and MSE of one image at each lambda.

    im: (3, H, W) in [0, 1]; lambdas and seeds: one per forward sample; noise: where the draws are made
    (:data:`NOISE`); refinement: a :class:`~lvae.evaluation.refine.Refinement` of each posterior first, its draws
    seeded by ``refine_seeds`` (one per sample, never ``seeds``), the steps it took written into ``refine_steps`` (an
    int array of len(lambdas), when given). Returns ``(bits, mse)``, two float64 arrays of
    len(lambdas): bits of the whole padded image, MSE on [0, 1] over the original pixels.
    """
    device = next(itertools.chain(model.parameters(), model.buffers())).device  # a channel may have no parameters
    noise_device = device if noise == 'device' else torch.device('cpu')
    sizer = sizer or _BatchSizer(device, 'auto')
    im = im.to(device).unsqueeze(0)
    padded = pad_to_multiple(im)
    bits, mse = np.empty(len(lambdas)), np.empty(len(lambdas))
    chained = None  # the offsets of every item, refined along the lambdas first (Convergence.chain)
    if refinement is not None and refinement.auto and refinement.rule.chain:
        drawn = [torch.Generator(noise_device).manual_seed(s) for s in refine_seeds]
        chained, taken = refine_chain(model, padded.expand(len(lambdas), -1, -1, -1), im,
                                      torch.tensor(lambdas, dtype=torch.float32, device=device), refinement, drawn, amp)
        if refine_steps is not None:
            refine_steps[:] = taken
    start = 0
    while start < len(lambdas):
        n = sizer.size(len(lambdas) - start, padded.shape[2] * padded.shape[3])
        chunk = slice(start, start + n)
        gens = [torch.Generator(noise_device).manual_seed(s) for s in seeds[chunk]]
        lmb = torch.tensor(lambdas[chunk], dtype=torch.float32, device=device)
        try:
            offsets = None if chained is None else [o[chunk] for o in chained]
            if refinement is not None and chained is None:
                drawn = [torch.Generator(noise_device).manual_seed(s) for s in refine_seeds[chunk]]
                offsets, taken = refine_posteriors(model, padded.expand(n, -1, -1, -1), im, lmb, refinement, drawn,
                                                   amp)
                if refine_steps is not None:
                    refine_steps[chunk] = taken
            with torch.inference_mode(), posterior_offsets(model, offsets) if offsets else contextlib.nullcontext(), \
                    torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == 'bf16'):
                x_hat, stats = model.forward_end2end(padded.expand(n, -1, -1, -1), lmb, noise=noise_from(gens))
                bits[chunk] = (model.kl_per_image(stats).double() * BITS_PER_NAT).cpu().numpy()
                mse[chunk] = distortion(model, x_hat, im).double().cpu().numpy()
        except torch.OutOfMemoryError:
            if sizer.shrink(n):
                continue
            raise
        start += n
    return bits, mse


def forward_bytes(config, pixels, lambdas=1):
    """About how much memory an inference forward of ``lambdas`` lambdas of one image of ``pixels`` padded pixels takes
    on top of the model: :data:`BYTES_PER_WIDTH` x pixels x the encoder and decoder widths of each stage over its
    area (stage s at 1/(4 * 2^s) of each side)."""
    widths = sum((config.enc_dims[s] + config.dec_dims[4 - s]) / (4 * 2 ** s) ** 2 for s in range(5))
    return BYTES_PER_WIDTH * pixels * lambdas * widths


def check_finite_weights(model):
    """A ValueError naming the tensors of ``model``'s state-dict that hold NaN or infinity (its bound would be NaN)."""
    state = model.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"the model's weights hold non-finite values in {len(bad)} of {len(state)} tensors "
                         f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): its bound would be NaN; no "
                         f"result is written")


def outside_range(lambdas, lmb_range):
    """Per lambda: True where it lies outside ``lmb_range`` (the range the model was trained on), beyond the
    rounding of a log-spaced grid's ends."""
    low, high = (float(v) for v in lmb_range)
    return [not low * (1 - 1e-9) <= v <= high * (1 + 1e-9) for v in lambdas]


def _leaves_model_as_found(evaluate):
    """``evaluate(model, ...)`` with the model given back as it came (:func:`lvae.accel.restoring`)."""
    @functools.wraps(evaluate)
    def wrapper(model, *args, **kwargs):
        with accel.restoring(model):
            return evaluate(model, *args, **kwargs)
    return wrapper


@_leaves_model_as_found
def evaluate_bound(model, images, lambdas=None, steps=16, device=None, bpp_pixels='original', samples=1,
                   seed=0, skip_invalid=False, lmb_batch='auto', amp=None, tf32_ok=False, noise='device',
                   progress=True, refine=None, journal=None, part=None):
    """Estimate the model's R(D) bound on ``images``: a :class:`~lvae.evaluation.testsets.TestSet`, or what
    :func:`~lvae.evaluation.testsets.as_test_set` resolves into one (a dataset name, a folder, a list of files, a
    source's name or an (N, 3, H, W) image tensor in [0, 1]).

    lambdas: list of lambdas (default: ``steps`` log-spaced over the model's ``lmb_range``); those outside
    ``lmb_range`` are evaluated, with a warning, and marked in ``outside_lmb_range``.
    samples: posterior draws K per image and lambda; the dataset averages are reported as the mean over
    the K draws, with their standard deviation (``bpp_std``, ``psnr_std``; None when K = 1, the paper's
    setting) and each draw's curves (``draws``). Draws are seeded from ``(seed, sample, image, lambda)``, so
    results do not depend on batching; ``noise`` (:data:`NOISE`) makes them on the model's device
    ('device', the default: fast) or on CPU generators ('cpu': the same draws on every device).
    lmb_batch: lambdas per forward ('auto' or an int); amp: None (fp32) or 'bf16' (autocast); tf32_ok: let
    CUDA run fp32 matmuls and convolutions in TF32 (default: strict fp32, whatever torch's global flags say).
    progress: a progress bar (True), nothing (False), or ``'lines'``: one line per finished image (batch logs).
    refine: refine each image's posterior at each lambda before its bound is drawn (:mod:`lvae.evaluation.refine`:
    a number of steps, ``'auto'`` (until converged) or a :class:`~lvae.evaluation.refine.Refinement`); a tighter bound
    from the same weights, recorded in the result's ``refine`` with the steps taken per image and lambda
    (``per_image[].refine_steps``).
    journal: a file path (or a :class:`~lvae.evaluation.journal.Journal`) where each image's figures are written as
    it is done; an evaluation of the same settings given the same journal takes the images it holds from it and
    evaluates the rest, with the numbers of one run through (``resumed`` in the result counts them). It stays
    after the call: remove it once the result is saved.
    part: a :class:`~lvae.evaluation.shards.Part`: evaluate only its block of the images into ``journal`` and
    return ``{'part', 'figures', 'seconds'}`` (the journal's entry of each image of the block, by index) instead of
    a result; the whole evaluation, given the journals of every part, then takes every image from them.
    The model runs in its :func:`lvae.accel.prepare` form for ``device`` (same numbers) and is given back as
    it came: device, memory format, ``training`` flag, blocks.

    Returns a dict: ``lambdas``, ``outside_lmb_range`` (a bool per lambda), ``bpp``, ``psnr`` (mean of
    per-image PSNR, the paper's), ``psnr_of_mean_mse`` (per-lambda lists, :mod:`lvae.evaluation.results`),
    ``bpp_std``,
    ``psnr_std``, ``draws`` (K x L lists of each draw's ``bpp``, ``psnr``, ``psnr_of_mean_mse``; None when
    K = 1), ``per_image`` (file, size and per-lambda bpp, PSNR and MSE on [0, 1] of each image, means over
    the draws), ``skipped`` (file names left out with ``skip_invalid``), ``test_set`` (its name), ``parts`` (how many
    images each part of a spread evaluation computed, 'whole' for those computed unspread), and the settings used.
    """
    if bpp_pixels not in BPP_PIXELS:
        raise ValueError(f'bpp_pixels must be one of {BPP_PIXELS}, got {bpp_pixels!r}')
    if int(samples) < 1:
        raise ValueError(f'samples must be >= 1, got {samples}')
    if amp not in (None, 'bf16'):
        raise ValueError(f"amp must be None or 'bf16', got {amp!r}")
    if noise not in NOISE:
        raise ValueError(f'noise must be one of {NOISE}, got {noise!r}')
    lambdas = [float(v) for v in (lambdas if lambdas is not None else lambda_grid(model.config.lmb_range, steps))]
    if not lambdas or min(lambdas) <= 0:
        raise ValueError(f'lambdas must be a non-empty list of positive numbers, got {lambdas}')
    outside = outside_range(lambdas, model.config.lmb_range)
    if any(outside):
        warnings.warn(f'lambdas {[round(v, 4) for v, o in zip(lambdas, outside) if o]} are outside the model\'s '
                      f'trained lmb_range {list(model.config.lmb_range)}: evaluated as asked, marked in the '
                      f'result (outside_lmb_range)', stacklevel=3)  # the caller of evaluate_bound
    test = as_test_set(images, progress=progress is True)
    say = functools.partial(print, flush=True) if progress == 'lines' else tqdm.write  # announced besides the bar
    if test.skipped and not skip_invalid:
        raise InvalidImagesError(test.skipped)
    if not len(test):
        raise InvalidImagesError(test.skipped, none_left=True) if test.skipped else ValueError('no images to evaluate')
    check_finite_weights(model)
    if part is not None and journal is None:
        raise ValueError('an evaluation of a part needs a journal: its figures go there')
    refinement = Refinement(refine) if isinstance(refine, (int, str)) else refine
    refinement = refinement if refinement is not None and refinement.steps else None  # 0 steps: the plain bound
    device = torch.device(device) if device is not None else default_device()
    if journal is not None:  # the weights' digest before accel.prepare: its forms differ between machines
        journal = journal if isinstance(journal, Journal) else Journal(journal)
        held = journal.start(journal_settings(model, lambdas, samples, seed, refinement, amp, noise, device,
                                              tf32_ok and device.type == 'cuda'))
        if held and progress:
            say(f'resuming: {journal.path} holds {held} of the {len(test)} images')
    model = accel.prepare(model, device).eval()
    sizer = _BatchSizer(device, lmb_batch)

    L, K = len(lambdas), int(samples)
    all_bpp, all_mse = np.empty((K, len(test), L)), np.empty((K, len(test), L))
    per_image = []
    t0, resumed, earlier = time.time(), 0, 0.0  # earlier: the seconds of the images taken from the journal
    parts, label = Counter(), journal.label if journal is not None else WHOLE  # images by the part that computed them
    indices = part.block(len(test)) if part is not None else range(len(test))
    desc = f'bound{", refined" if refinement else ""}{f" (part {part.label})" if part is not None else ""}'
    bar = tqdm(indices, desc=desc, unit='img', disable=progress is not True, dynamic_ncols=True)
    for i in bar:
        name, im = test.image(i)
        h, w = im.shape[1:]
        pixels = pixel_count(h, w, bpp_pixels)
        digest = image_digest(im) if journal is not None else None
        figures = journal.done(i, name, digest, L * K) if journal is not None else None
        if figures is not None:
            bits, mse, steps = figures['bits'], figures['mse'], figures['steps']
            resumed, earlier = resumed + 1, earlier + figures['seconds']
        else:
            padded = pixel_count(h, w, 'padded')
            per_forward = sizer.size(L * K, padded)
            need = forward_bytes(model.config, padded, per_forward) if hasattr(model.config, 'enc_dims') else 0
            if need > LARGE_FORWARD:  # (a source's optimal channel has no widths: it holds no activations)
                hint = ' (fewer lambdas per forward: --lmb-batch 1)' if per_forward > 1 else ''
                warnings.warn(f'{name} ({w}x{h}): one forward takes about {need / 2 ** 30:.1f} GiB of memory on top '
                              f'of the model{hint}', stacklevel=3)
            t1 = time.time()
            seeds = [_seed(seed, k, i, j) for k in range(K) for j in range(L)]
            refine_seeds = [_seed(seed, k, i, j, REFINE_STREAM) for k in range(K) for j in range(L)]
            steps = np.zeros(L * K, dtype=np.int64)
            with tf32(tf32_ok):
                bits, mse = bound_of_image(model, im, lambdas * K, seeds, sizer=sizer, amp=amp, noise=noise,
                                           refinement=refinement, refine_seeds=refine_seeds, refine_steps=steps)
        if not (np.isfinite(bits).all() and np.isfinite(mse).all()):
            at = [round(v, 4) for v, b, m in zip(lambdas * K, bits, mse) if not np.isfinite(b + m)]
            raise ValueError(f'{name}: the model gave a non-finite rate or distortion at lambda {at[:4]}; no result '
                             f'is written')
        if journal is not None and figures is None:
            journal.add(i, name, digest, bits, mse, steps, time.time() - t1)
        parts[figures['part'] if figures is not None else label] += 1
        all_bpp[:, i], all_mse[:, i] = (bits / pixels).reshape(K, L), mse.reshape(K, L)
        img_bpp, img_psnr = all_bpp[:, i].mean(0), psnr(all_mse[:, i]).mean(0)
        per_image.append({'file': name, 'height': h, 'width': w, 'bpp': img_bpp.tolist(),
                          'psnr': img_psnr.tolist(), 'mse': all_mse[:, i].mean(0).tolist(),
                          **({'refine_steps': steps.reshape(K, L).max(0).tolist()} if refinement else {})})
        figures_text = f'{name} bpp {img_bpp[0]:.3f}-{img_bpp[-1]:.3f} psnr {img_psnr[0]:.2f}-{img_psnr[-1]:.2f}'
        bar.set_postfix_str(figures_text)
        if progress == 'lines':
            done = 'from a journal' if figures is not None else f'{time.time() - t1:.0f} s'
            say(f'{desc}: {i - indices.start + 1}/{len(indices)} {figures_text} ({done})')
    if part is not None:
        held = journal.held()
        return {'part': part.label, 'figures': {i: held[i] for i in indices}, 'seconds': time.time() - t0}
    curves = dataset_curves(*(np.array([r[key] for r in per_image]) for key in ('bpp', 'psnr', 'mse')))
    draws = dataset_curves(all_bpp, psnr(all_mse), all_mse)  # (K, L) each: the dataset curves of each draw
    return {
        'lambdas': lambdas, 'lmb_range': list(model.config.lmb_range), 'outside_lmb_range': outside,
        **{key: value.tolist() for key, value in curves.items()},
        'bpp_std': draws['bpp'].std(0, ddof=1).tolist() if K > 1 else None,
        'psnr_std': draws['psnr'].std(0, ddof=1).tolist() if K > 1 else None,
        'draws': {key: value.tolist() for key, value in draws.items()} if K > 1 else None,
        'per_image': per_image,
        'skipped': [{'file': os.path.basename(e.path), 'reason': e.reason} for e in test.skipped],
        'test_set': test.name, 'num_images': len(test), 'samples': K, 'seed': seed, 'bpp_pixels': bpp_pixels,
        'device': str(device), 'amp': amp, 'tf32': bool(tf32_ok and device.type == 'cuda'), 'noise': noise,
        'refine': refinement.record(seed) if refinement else None, 'seconds': earlier + time.time() - t0,
        **({'resumed': resumed} if journal is not None else {}), 'parts': dict(parts),
    }
