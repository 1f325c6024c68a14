"""The one image loader of the project: any common file -> RGB float tensor in [0, 1].

EXIF orientation is applied; L, LA, P, PA, RGBA, CMYK, YCbCr and 1-bit images become RGB (alpha is
dropped, as in codec test sets); 16-bit images are scaled by 1/65535. Unreadable files raise
:class:`ImageError`, which names the file.
"""
import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pnm')

# Pillow modes holding integers wider than 8 bits, and the full-scale value of each.
_WIDE_MODES = {'I;16': 65535, 'I;16L': 65535, 'I;16B': 65535, 'I;16N': 65535, 'I': 65535}


class ImageError(ValueError):
    """A file that cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path, reason):
        super().__init__(f'{path}: {reason}')
        self.path, self.reason = os.fspath(path), reason


def _to_rgb_array(img, path):
    """A decoded PIL image -> float32 array (H, W, 3) in [0, 1]."""
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        if arr.min() < 0 or arr.max() > _WIDE_MODES[img.mode]:
            raise ImageError(path, f'{img.mode} values outside [0, {_WIDE_MODES[img.mode]}]')
        arr = (arr / _WIDE_MODES[img.mode]).astype(np.float32)
        return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr[:, :, :3]
    if img.mode == 'F':
        raise ImageError(path, 'floating-point images (mode F) have no defined pixel scale; save as 8/16-bit')
    if img.mode != 'RGB':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB').convert('RGB')
    return np.asarray(img, dtype=np.float32) / 255.0


def load_image(path):
    """Read ``path`` -> tensor (3, H, W), float32 in [0, 1]. Raises :class:`ImageError` naming the file."""
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(path, 'empty file')
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_rgb_array(img, path)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, 'not an image file (unrecognised format)') from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(path, f'unreadable image ({type(e).__name__}: {e})') from None
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(path, f'image has no pixels ({arr.shape[1]}x{arr.shape[0]})')
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def list_images(folder):
    """Sorted image files (by extension) directly inside ``folder``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'not a folder: {folder}')
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def check_images(paths):
    """Decode every file once: returns ``(good_paths, bad)`` with ``bad`` a list of :class:`ImageError`."""
    good, bad = [], []
    for p in paths:
        try:
            load_image(p)
            good.append(p)
        except ImageError as e:
            bad.append(e)
    return good, bad
