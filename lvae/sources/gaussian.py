"""Stationary Gaussian image fields: images whose R(D) is known exactly.

A field of size S holds 3 colour components (an orthonormal colour basis ``basis``, columns: luminance first,
then two chroma axes), each a stationary Gaussian process on the S x S torus with power spectrum

    P_k(f) = c_k / (f^2 + f0^2)^(alpha_k / 2)        (f: spatial frequency in cycles per pixel)

scaled so that component k has per-pixel standard deviation ``std[k]``, plus the mean colour ``mean``. Its
covariance is circulant within each component, so its 3 S^2 eigenvalues are the spectrum values at the S^2
DFT frequencies of each component, and its R(D) under MSE is the reverse water-filling over them
(Cover & Thomas, Theorem 10.3.3): for a water level theta, per dimension

    D(theta) = mean_i min(theta, lambda_i),   R(theta) = sum_i max(0, 1/2 log2(lambda_i / theta)) bits per image.

Scales: pixels in [0, 1]; MSE per dimension (channel value) in the [0, 1] scale; rates in bits per pixel
(one pixel = 3 values).
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch

REJECT_TRIES = 1000  # draws of one image before giving up on a field that rarely stays inside [0, 1]


def frequencies(size):
    """(size, size) radial spatial frequency in cycles per pixel at each DFT bin (numpy's fft layout)."""
    f = np.fft.fftfreq(size)
    return np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


@dataclass
class GaussianField:
    """A stationary Gaussian RGB field of ``size`` x ``size`` pixels (see the module docstring)."""
    name: str
    size: int
    mean: list                 # (3,) mean colour, [0, 1] scale
    basis: list                # (3, 3) orthonormal; column k is colour component k in RGB
    std: list                  # (3,) per-pixel standard deviation of each component, [0, 1] scale
    alpha: list                # (3,) spectral exponent of each component (2: the 1/f^2 of natural images)
    f0: float = None           # spectral knee in cycles per pixel (default: 1 / size, one cycle per image)
    origin: str = ''           # where the parameters come from
    held_out_images: int = 100  # the fixed evaluation sample
    held_out_seed: int = 2023
    _spectra: np.ndarray = field(default=None, init=False, repr=False)
    _eigenvalues: np.ndarray = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.f0 = self.f0 or 1.0 / self.size
        basis = np.asarray(self.basis, dtype=np.float64)
        if basis.shape != (3, 3) or not np.allclose(basis.T @ basis, np.eye(3), atol=1e-6):
            raise ValueError(f'{self.name}: basis must be a 3x3 orthonormal matrix')
        f = frequencies(self.size)
        spectra = []
        for std, alpha in zip(self.std, self.alpha):
            shape = (f ** 2 + self.f0 ** 2) ** (-alpha / 2)
            spectra.append(shape * std ** 2 / shape.mean())   # mean over bins = per-pixel variance
        self._spectra = np.stack(spectra)                       # (3, size, size)
        self._eigenvalues = np.sort(self._spectra.ravel())[::-1].copy()

    # ------------------------------------------------------------------------------------------------ the truth
    def spectra(self):
        """(3, size, size) float64: the eigenvalue of each colour component at each 2-D frequency bin (numpy's fft
        layout), the variance of the field's coefficient there in any real orthonormal Fourier basis (the Hartley
        basis of :mod:`lvae.sources.optimal`)."""
        return self._spectra.copy()

    def eigenvalues(self):
        """The 3 * size^2 eigenvalues of the covariance, [0, 1] pixel scale (float64, descending)."""
        return self._eigenvalues.copy()

    def pixel_std(self):
        """(3,) standard deviation of each RGB channel."""
        basis = np.asarray(self.basis)
        return np.sqrt((basis ** 2) @ np.asarray(self.std) ** 2)

    def zero_rate_psnr(self):
        """The PSNR (dB) of coding nothing: the MSE of the mean image, the per-dimension variance."""
        return float(10 * np.log10(1 / self.eigenvalues().mean()))

    def _levels(self, mse):
        """Reverse water-filling, exactly and for many MSEs at once: ``(theta, coded_from)``, the water level of each
        MSE and the index in the ascending eigenvalues from which components are coded. ``D(theta)`` is piecewise
        linear between the sorted eigenvalues, ``(sum of those below theta + theta * count of the rest) / n``, so
        each MSE's piece is found by a search and the level solved for on it."""
        lam = self._eigenvalues[::-1]                                           # ascending
        n = len(lam)
        below = np.concatenate([[0.0], np.cumsum(lam)])                         # sum of the j smallest
        at_knots = (below[:-1] + lam * (n - np.arange(n))) / n                  # D(theta = lam[j])
        mse = np.asarray(mse, dtype=np.float64)
        if not (mse > 0).all():
            raise ValueError(f'mse must be > 0, got {mse.min()}')
        j = np.minimum(np.searchsorted(at_knots, mse, side='right'), n - 1)
        theta = np.where(mse >= lam.mean(), lam[-1], (n * mse - below[j]) / (n - j))
        return theta, j

    def water_level(self, mse):
        """The reverse water-filling level theta at which the distortion is ``mse`` (per dimension, [0, 1]); the
        largest eigenvalue at and beyond the variance. A number or an array."""
        theta, _ = self._levels(mse)
        return float(theta) if np.ndim(mse) == 0 else theta

    def rate_bpp(self, mse):
        """The exact R(D) in bits per pixel at per-dimension MSE ``mse`` ([0, 1] scale); 0 at and beyond the
        variance. A number or an array."""
        theta, j = self._levels(mse)
        log_lam = np.log2(self._eigenvalues[::-1])
        above = np.concatenate([np.cumsum(log_lam[::-1])[::-1], [0.0]])       # sum of log2 lambda from index j on
        n = len(log_lam)
        bits = 0.5 * np.maximum(above[j] - (n - j) * np.log2(theta), 0.0)
        bits = np.where(np.asarray(mse) >= self._eigenvalues.mean(), 0.0, bits)
        return float(bits / self.size ** 2) if np.ndim(mse) == 0 else bits / self.size ** 2

    def rate_at_psnr(self, psnr):
        """R(D) in bits per pixel at PSNR ``psnr`` (dB, of the MSE on [0, 1]); number or array."""
        return self.rate_bpp(10.0 ** (-np.asarray(psnr, dtype=np.float64) / 10))

    def curve(self, psnr):
        """The true curve at the given PSNRs, as an R-D curve dict (``bpp``, ``psnr``, ``psnr_of_mean_mse``):
        R(D) is a function of the expected MSE, so both PSNR conventions carry the same values."""
        psnr = [float(p) for p in psnr]
        return {'bpp': np.atleast_1d(self.rate_at_psnr(psnr)).tolist(), 'psnr': psnr, 'psnr_of_mean_mse': psnr}

    # ------------------------------------------------------------------------------------------------ samples
    def _draw(self, n, generator=None, device='cpu'):
        """(n, 3, size, size) float64 draws of the field, unclipped."""
        white = torch.randn((n, 3, self.size, self.size), generator=generator, dtype=torch.float64, device=device)
        root = torch.from_numpy(np.sqrt(self._spectra)).to(device)
        comps = torch.fft.ifft2(torch.fft.fft2(white) * root).real          # covariance: diag(spectrum) in DFT
        basis = torch.tensor(self.basis, dtype=torch.float64, device=device)
        rgb = torch.einsum('ck,nkhw->nchw', basis, comps)
        return rgb + torch.tensor(self.mean, dtype=torch.float64, device=device)[:, None, None]

    def sample(self, n, generator=None):
        """``n`` images, (n, 3, size, size) float32 in [0, 1]. Never clipped: a draw with a value outside
        [0, 1] (probability :meth:`outside_probability`, about 1e-4) is rejected and drawn again, so the images
        follow the field conditioned on [0, 1] (docs/sources.md: what that does to R(D))."""
        out = self._draw(n, generator)
        for _ in range(REJECT_TRIES):
            bad = ((out < 0) | (out > 1)).flatten(1).any(1)
            if not bad.any():
                return out.float()
            out[bad] = self._draw(int(bad.sum()), generator)
        raise RuntimeError(f'{self.name}: {REJECT_TRIES} draws in a row left [0, 1]; lower its std')

    def outside_probability(self):
        """An upper bound on the probability that one image has a value outside [0, 1] (a union bound over its
        values of the Gaussian tails)."""
        sd = self.pixel_std()
        tails = [0.5 * math.erfc(m / (s * math.sqrt(2))) + 0.5 * math.erfc((1 - m) / (s * math.sqrt(2)))
                 for m, s in zip(self.mean, sd)]
        return min(1.0, self.size ** 2 * sum(tails))

    def held_out(self):
        """The fixed evaluation sample: ``held_out_images`` images from the seed ``held_out_seed``, (N, 3, S, S)
        float32 in [0, 1] (the same on every machine; never written as 8-bit files)."""
        return self.sample(self.held_out_images, torch.Generator().manual_seed(self.held_out_seed))

    def describe(self):
        return (f'{self.name}: stationary Gaussian RGB field of {self.size}x{self.size} pixels, mean '
                f'{[round(m, 3) for m in self.mean]}, per-channel std {[round(s, 4) for s in self.pixel_std()]}, '
                f'spectral exponents {[round(a, 3) for a in self.alpha]} ({self.origin})')
