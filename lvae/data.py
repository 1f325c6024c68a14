"""Training data: random crops of an image folder, robust to unreadable files.

The paper's recipe: a random 256x256 crop of each image (reflect padding when the image is smaller than
the crop) and a random horizontal flip. An unreadable file never stops training: it is skipped with a
warning (once per file and worker) and another image is drawn in its place; each sample reports how
many files were skipped for it, so the training loop can count them across DataLoader workers.
"""
import os
import warnings

import torch
import torch.nn.functional as F

from lvae.images import ImageError, list_images, load_image
from lvae.paths import dataset_path
from lvae.sources import GaussianField, get_source, resolve
from lvae.training.signals import ignore_stop_signals

MAX_RETRIES = 100  # draws before giving up on a folder whose files are (nearly) all unreadable


def parse_transform(spec):
    """``'crop=256,hflip=True'`` -> ``{'crop': 256, 'hflip': True}``; every key is optional."""
    out = {'crop': 256, 'hflip': True}
    for part in filter(None, (p.strip() for p in spec.split(','))):
        key, sep, value = part.partition('=')
        key, value = key.strip(), value.strip()
        if not sep or key not in out:
            raise ValueError(f'--transform {spec!r}: expected comma-separated crop=N,hflip=True|False, got {part!r}')
        if key == 'crop':
            if not value.isdigit() or int(value) <= 0 or int(value) % 64:
                raise ValueError(f'--transform crop must be a positive multiple of 64, got {value!r}')
            out['crop'] = int(value)
        else:
            if value.lower() not in ('true', 'false', '1', '0'):
                raise ValueError(f'--transform hflip must be True or False, got {value!r}')
            out['hflip'] = value.lower() in ('true', '1')
    return out


def reflect_pad_to(im, size):
    """(3, H, W) -> (3, max(H, size), max(W, size)) by reflect padding (repeated for images < size / 2)."""
    while im.shape[1] < size or im.shape[2] < size:
        ph = min(size - im.shape[1], im.shape[1] - 1) if im.shape[1] < size else 0
        pw = min(size - im.shape[2], im.shape[2] - 1) if im.shape[2] < size else 0
        if ph == 0 and pw == 0:  # a 1-pixel side cannot be reflected
            return F.pad(im[None], (0, max(size - im.shape[2], 0), 0, max(size - im.shape[1], 0)),
                         mode='replicate')[0]
        im = F.pad(im[None], (0, pw, 0, ph), mode='reflect')[0]
    return im


def random_crop_flip(im, crop, hflip=True):
    """(3, H, W) in [0, 1] -> a random (3, crop, crop) patch, mirrored left-right with probability 1/2."""
    im = reflect_pad_to(im, crop)
    top = int(torch.randint(im.shape[1] - crop + 1, ()))
    left = int(torch.randint(im.shape[2] - crop + 1, ()))
    im = im[:, top:top + crop, left:left + crop]
    if hflip and bool(torch.rand(()) < 0.5):
        im = im.flip(-1)
    return im.contiguous()


class ImageFolderCrops(torch.utils.data.Dataset):
    """Random crops of the images in a folder or known dataset. Item ``i`` -> ``(crop, skipped)``:
    crop (3, crop, crop) float in [0, 1], skipped the number of unreadable files passed over for it."""

    def __init__(self, root, crop=256, hflip=True):
        self.root = root if os.path.isdir(root) else dataset_path(root)
        self.paths = list_images(self.root)
        if not self.paths:
            raise FileNotFoundError(f'no image files in training folder {self.root}')
        self.crop, self.hflip = crop, hflip
        self._warned = set()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        for skipped in range(MAX_RETRIES):
            path = self.paths[index]
            try:
                return random_crop_flip(load_image(path), self.crop, self.hflip), skipped
            except ImageError as e:
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(f'skipping unreadable training image: {e}', RuntimeWarning, stacklevel=1)
                index = int(torch.randint(len(self.paths), ()))
        raise RuntimeError(f'{MAX_RETRIES} unreadable images in a row in {self.root}; is it an image folder?')

    def __repr__(self):
        return f'{type(self).__name__}({os.path.abspath(self.root)}, {len(self)} files, crop={self.crop}, ' \
               f'hflip={self.hflip})'


class SourceSamples(torch.utils.data.Dataset):
    """Fresh draws of a source with a known R(D) (:mod:`lvae.sources`) as a training set: item ``i`` ->
    ``(image, 0)``, a new draw at every access from torch's RNG (which the DataLoader seeds per worker), so no
    image is seen twice; ``length`` items make one nominal pass over the data."""

    def __init__(self, name, length=10_000):
        self.source, self.length = get_source(name), length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.source.sample(1)[0], 0

    def __repr__(self):
        return f'{type(self).__name__}({self.source.name}, fresh {self.source.size}x{self.source.size} draws)'


def training_set(name, crop=256, hflip=True):
    """The training set of ``--trainset``: fresh draws of a source (its own image size; ``crop`` and ``hflip``
    do not apply), else random crops of an image folder or known dataset (:class:`ImageFolderCrops`)."""
    found = resolve(name)
    return SourceSamples(name) if isinstance(found, GaussianField) else ImageFolderCrops(found, crop=crop, hflip=hflip)


def endless_batches(dataset, batch_size, rank=0, world=1, seed=0, workers=4, pin_memory=False, epoch=0):
    """This rank's share of ``dataset`` in batches, forever: ``(epoch, batch)``, re-shuffled at each pass over
    the data (a ``DistributedSampler`` with ``seed``), starting at pass ``epoch``. Loader workers ignore
    SIGTERM / SIGINT, which the training process handles (:mod:`lvae.training.signals`)."""
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                                  drop_last=len(dataset) >= world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=pin_memory, persistent_workers=workers > 0, drop_last=True,
                                         worker_init_fn=ignore_stop_signals if workers else None)
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1
