"""Fit a :class:`~lvae.sources.gaussian.GaussianField` to a folder of images: their mean colour, colour axes
(the principal components of their pixels) and, per axis, the exponent of the power spectrum of crops.

The contrast is then scaled down to ``max_std`` (largest per-channel standard deviation), so that draws stay
inside [0, 1]: the field keeps the photographs' colour balance and spectral shape, not their contrast (a
Gaussian with a photograph's contrast would leave [0, 1] in most draws).
"""
import numpy as np

from lvae.data import dataset_path, list_images, load_image
from lvae.sources.gaussian import GaussianField, frequencies


def crops_of(paths, size, per_image, seed):
    """``per_image`` random ``size`` x ``size`` crops of each image: (N, 3, size, size) float64 in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for path in paths:
        im = load_image(path).double().numpy()
        h, w = im.shape[1:]
        if h < size or w < size:
            continue
        for _ in range(per_image):
            top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            out.append(im[:, top:top + size, left:left + size])
    if not out:
        raise ValueError(f'no image of at least {size}x{size} pixels to fit')
    return np.stack(out)


def spectral_exponent(components, f0):
    """The exponent alpha of ``P(f) = c / (f^2 + f0^2)^(alpha/2)`` fit to the mean Hann-windowed periodogram of
    ``components`` (N, size, size), by least squares in log-log over the nonzero frequencies up to 1/2."""
    size = components.shape[-1]
    window = np.outer(np.hanning(size), np.hanning(size))
    centred = components - components.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(centred * window)) ** 2).mean(0) / (window ** 2).sum()
    f = frequencies(size)
    keep = (f > 0) & (f <= 0.5)
    x = np.log(f[keep] ** 2 + f0 ** 2)
    slope, _ = np.polyfit(x, np.log(power[keep]), 1)
    return float(-2 * slope)


def fit_field(folder, size=64, per_image=64, seed=0, max_std=0.08, name=None):
    """The Gaussian field fit to the images of ``folder`` (a path or known dataset name)."""
    root = dataset_path(folder)
    paths = list_images(root)
    crops = crops_of(paths, size, per_image, seed)                     # (N, 3, S, S)
    pixels = crops.transpose(1, 0, 2, 3).reshape(3, -1)
    mean = pixels.mean(1)
    variances, basis = np.linalg.eigh(np.cov(pixels))
    order = np.argsort(variances)[::-1]
    variances, basis = variances[order], basis[:, order]
    basis *= np.sign(basis.sum(0) + 1e-12)                             # luminance positive; fixed signs
    comps = np.einsum('ck,nchw->nkhw', basis, crops)
    alpha = [spectral_exponent(comps[:, k], 1.0 / size) for k in range(3)]
    std = np.sqrt(variances)
    scale = max_std / np.sqrt((basis ** 2) @ std ** 2).max()
    return GaussianField(name=name or f'gaussian-{size}', size=size, mean=[round(float(m), 4) for m in mean],
                         basis=basis.round(6).tolist(), std=(std * scale).round(6).tolist(),
                         alpha=[round(a, 4) for a in alpha],
                         origin=f'fit to {len(paths)} images ({len(crops)} crops of {size}x{size}, seed {seed}), '
                                f'contrast scaled to a largest per-channel std of {max_std}')
