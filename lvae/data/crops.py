"""Random crops of an image folder, robust to unreadable files: the training images of the paper's recipe.

The paper's recipe: a random 256x256 crop of each image (reflect padding when the image is smaller than
the crop) and a random horizontal flip. An unreadable file never stops training: it is skipped with a
warning (once per file and worker) and another image is drawn in its place; each sample reports how
many files were skipped for it, so the training loop can count them across DataLoader workers.
"""
import os
import warnings

import torch
import torch.nn.functional as F

from lvae.data.images import ImageError, list_images, load_image
from lvae.data.paths import dataset_path

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
