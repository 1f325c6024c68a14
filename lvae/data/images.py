"""The one image loader of the project: any common file -> RGB float tensor in [0, 1].

EXIF orientation is applied; L, LA, P, PA, RGBA, CMYK, YCbCr and 1-bit images become RGB (alpha is
dropped, as in codec test sets); 16-bit images are scaled by 1/65535. Unreadable files raise
:class:`ImageError`, which names the file.
"""
import hashlib
import io
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


def _pixels(img, path):
    """A decoded PIL image -> ``(values, scale)``: its values (H, W, 3) as integers (uint8, or uint16 for 16-bit
    images) and their full-scale value (255 or 65535)."""
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > _WIDE_MODES[img.mode]:
            raise ImageError(path, f'{img.mode} values outside [0, {_WIDE_MODES[img.mode]}]')
        arr = arr.astype(np.uint16)
        return (np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr[:, :, :3]), _WIDE_MODES[img.mode]
    if img.mode == 'F':
        raise ImageError(path, 'floating-point images (mode F) have no defined pixel scale; save as 8/16-bit')
    if img.mode != 'RGB':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB').convert('RGB')
    return np.asarray(img, dtype=np.uint8), 255


def decode_image(path):
    """Read ``path`` -> ``(values, scale)``: its pixels as integers (H, W, 3) and their full-scale value, a quarter
    (8-bit) of the memory of :func:`load_image`'s floats; :func:`to_tensor` turns them into those floats. Raises
    :class:`ImageError` naming the file."""
    return _decoded(os.fspath(path), _content(path))


def read_image_file(path):
    """Read ``path`` once -> ``(values, scale, facts)``: :func:`decode_image`'s pixels and, from the very bytes
    decoded, ``facts = {'file', 'bytes', 'sha256'}`` (a file replaced meanwhile can't give one its hash and the other
    its pixels). Raises :class:`ImageError` naming the file."""
    content = _content(path)
    values, scale = _decoded(os.fspath(path), content)
    return values, scale, {'file': os.path.basename(path), 'bytes': len(content),
                           'sha256': hashlib.sha256(content).hexdigest()}


def _content(path):
    """The bytes of file ``path``; :class:`ImageError` where it can't be read."""
    path = os.fspath(path)
    if os.path.islink(path) and not os.path.exists(path):
        raise ImageError(path, f'a symbolic link to {os.readlink(path)}, which does not exist')
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as e:
        raise ImageError(path, f'unreadable image ({type(e).__name__}: {e})') from None


def _decoded(path, content):
    """The ``(values, scale)`` of an image file's ``content`` (its bytes), errors naming ``path``."""
    try:
        if not content:
            raise ImageError(path, 'empty file')
        with Image.open(io.BytesIO(content)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            values, scale = _pixels(img, path)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(path, 'not an image file (unrecognised format)') from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(path, f'unreadable image ({type(e).__name__}: {e})') from None
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ImageError(path, f'image has no pixels ({values.shape[1]}x{values.shape[0]})')
    return values, scale


def to_tensor(values, scale):
    """:func:`decode_image`'s ``(values, scale)`` -> tensor (3, H, W), float32 in [0, 1]."""
    if scale == 255:
        arr = values.astype(np.float32) / 255.0
    else:
        arr = (values.astype(np.float64) / scale).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def load_image(path):
    """Read ``path`` -> tensor (3, H, W), float32 in [0, 1]. Raises :class:`ImageError` naming the file."""
    return to_tensor(*decode_image(path))


def list_images(folder):
    """Sorted image files (by extension) directly inside ``folder``; a symbolic link that leads nowhere is listed
    too, so that it is reported as unreadable like any other file."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f'not a folder: {folder}')
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and (os.path.isfile(os.path.join(folder, f))
                                                               or os.path.islink(os.path.join(folder, f))))


def check_images(paths):
    """Decode every file once: returns ``(good_paths, bad)`` with ``bad`` a list of :class:`ImageError`."""
    good, bad = [], []
    for p in paths:
        try:
            decode_image(p)
            good.append(p)
        except ImageError as e:
            bad.append(e)
    return good, bad
