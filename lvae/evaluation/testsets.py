"""A test set: what a bound is evaluated on, resolved once from whatever names it.

:func:`as_test_set` takes a known dataset name (a known test set missing on this machine is downloaded first), a
folder, a list of image files, a source's name (:mod:`lvae.sources`: its fixed held-out sample), a source, or an
(N, 3, H, W) tensor, and gives a :class:`TestSet`: its images, each file decoded once (and kept as the file's
integers, a quarter of the memory of floats for 8-bit files), the files that are not usable images, what a result
records of it, and how results on it are compared (the default BD-rate anchor, the PSNR convention).
``evaluate_bound``, ``eval-var-rate.py`` and validation during training all take one.
"""
import functools
import os
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lvae.data import ImageError, dataset_name, list_images, read_image_file, to_tensor
from lvae.data.downloads import expected_images
from lvae.evaluation.anchors import DEFAULT_ANCHOR, TRUE_RD
from lvae.sources import GaussianField, resolve, source_record


@dataclass
class TestSet:
    """Images to evaluate a bound on. ``name``: what results call the set (a known dataset's name, a folder's
    name, a source's name); ``images``: ``[(name, pixels)]``, pixels a (3, H, W) float tensor in [0, 1] or a file's
    decoded ``(values, scale)``; ``skipped``: an :class:`~lvae.data.ImageError` per unusable file; ``source``: the
    source whose held-out sample the images are (or None); ``folder``: where the files are (or None); ``paths``:
    the usable files, in the order of ``images``; ``files``: their names, sizes and sha256, of the bytes decoded."""
    __test__ = False  # a test set, not a test: pytest leaves it alone where a test module imports it
    name: str
    images: list
    skipped: list = field(default_factory=list)
    source: GaussianField = None
    folder: str = None
    paths: list = None
    files: list = None

    def __len__(self):
        return len(self.images)

    def image(self, i):
        """``(name, (3, H, W) float32 tensor in [0, 1])`` of image ``i``."""
        name, pixels = self.images[i]
        return name, pixels if isinstance(pixels, torch.Tensor) else to_tensor(*pixels)

    def head(self, n):
        """The set of its first ``n`` images (all when ``n`` is 0 or None)."""
        if not n:
            return self
        paths, files = (self.paths[:n], self.files[:n]) if self.paths is not None else (None, None)
        return TestSet(self.name, self.images[:n], self.skipped, self.source, self.folder, paths, files)

    @property
    def partial(self):
        """``(usable images, images the set has)`` of a known test set with images missing or unusable here (e.g. a
        folder named ``kodak`` holding 2 images: ``(2, 24)``), else None."""
        expected = expected_images(self.name) if self.source is None else None
        return (len(self.images), expected) if expected and len(self.images) < expected else None

    @property
    def default_anchor(self):
        """The BD-rate reference of results on this set: a source's true R(D), else VTM 18.0."""
        return TRUE_RD if self.source is not None else DEFAULT_ANCHOR

    @property
    def convention(self):
        """The PSNR convention in which results are compared with the reference: against a source's true R(D),
        a function of the expected distortion, the PSNR of the mean MSE; else the paper's mean of per-image PSNR."""
        return 'psnr_of_mean_mse' if self.source is not None else 'psnr'

    @functools.cached_property
    def record(self):
        """What a results JSON records of the set (its ``dataset``): a source's description, or the files' names,
        sizes and sha256 (never the machine's paths)."""
        if self.source is not None:
            return {**source_record(self.source.name), 'images': len(self.images)}
        if self.files is not None:
            record = {'name': self.name, 'files': self.files}
            return {**record, 'expected_images': self.partial[1]} if self.partial else record
        return {'name': self.name, 'images': len(self.images), 'shapes': sorted({tuple(p.shape) for _, p in
                                                                                  self.images})}


def as_test_set(images, progress=True):
    """Resolve ``images`` into a :class:`TestSet` (see the module docstring); a TestSet is returned as it is."""
    if isinstance(images, TestSet):
        return images
    if isinstance(images, torch.Tensor):
        return TestSet('images', _tensor_items(images))
    if isinstance(images, (str, os.PathLike)):
        found = resolve(os.fspath(images), download=True, progress=progress)
        if isinstance(found, GaussianField):
            return _held_out(found)
        paths = list_images(found)
        if not paths:
            raise FileNotFoundError(f'no image files in {found}')
        name = dataset_name(images) or os.path.basename(os.path.normpath(found))
        return _decoded(name, paths, found, progress)
    if isinstance(images, GaussianField):
        return _held_out(images)
    paths = [os.fspath(p) for p in images]
    if not paths:
        raise ValueError('no images given')
    folder = os.path.dirname(os.path.abspath(paths[0]))
    return _decoded(dataset_name(folder) or os.path.basename(folder), paths, folder, progress)


def _tensor_items(images):
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f'an image tensor must be (N, 3, H, W) float, got {tuple(images.shape)} {images.dtype}')
    return [(f'{i:04d}', images[i].float()) for i in range(len(images))]


def _held_out(source):
    return TestSet(source.name, _tensor_items(source.held_out()), source=source)


def _decoded(name, paths, folder, progress):
    """The files read and decoded once each, hashed from the bytes decoded; those that are not usable images go to
    ``skipped``."""
    items, good, files, bad = [], [], [], []
    for path in tqdm(paths, desc=f'reading {name}', unit='img', disable=not progress or len(paths) < 32,
                     leave=False):
        try:
            values, scale, facts = read_image_file(path)
        except ImageError as e:
            bad.append(e)
            continue
        items.append((os.path.basename(path), (values, scale)))
        good.append(path)
        files.append(facts)
    return TestSet(name, items, bad, folder=folder, paths=good, files=files)
