"""The image loader: modes, 16-bit scaling, EXIF orientation, and errors that name the file."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from lvae.data.images import ImageError, check_images, list_images, load_image


def test_odd_files_load_as_rgb_in_unit_range(odd_dir):
    for name, size in [('gray-L-256.png', (256, 256)), ('gray16-200x120.png', (120, 200)),
                       ('palette-P-512.png', (512, 512)), ('rgba-192x128.png', (128, 192)),
                       ('tiny-24x16.png', (16, 24)), ('odd-131x77.png', (77, 131))]:
        im = load_image(os.path.join(odd_dir, name))
        assert im.dtype == torch.float32 and tuple(im.shape) == (3, *size), name
        assert 0 <= im.min() and im.max() <= 1 and im.std() > 0.01, name


def test_16_bit_is_scaled_not_clipped(odd_dir):
    path = os.path.join(odd_dir, 'gray16-200x120.png')
    raw = np.asarray(Image.open(path), dtype=np.float64)
    im = load_image(path)
    assert torch.allclose(im[0].double(), torch.from_numpy(raw / 65535), atol=1e-6)
    assert (im[0] == im[1]).all() and (im[0] == im[2]).all()
    assert 0.05 < im.mean() < 0.95  # clipping 16-bit values to 8 bits would give all ones


def test_modes_and_exif_orientation(tmp_path):
    yy, xx = np.mgrid[0:20, 0:30]
    rgb = Image.fromarray(np.stack([8 * xx, 12 * yy, 255 - 8 * xx], axis=2).astype(np.uint8))  # smooth, asymmetric
    rgb.save(tmp_path / 'rgb.png')
    ref = load_image(tmp_path / 'rgb.png')
    rgb.convert('CMYK').save(tmp_path / 'cmyk.tif')
    assert load_image(tmp_path / 'cmyk.tif').shape == (3, 20, 30)
    rgb.convert('1').save(tmp_path / 'bw.png')
    assert set(load_image(tmp_path / 'bw.png').unique().tolist()) <= {0.0, 1.0}
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb.save(tmp_path / 'rot.jpg', exif=exif, quality=100)
    rot = load_image(tmp_path / 'rot.jpg')
    assert rot.shape == (3, 30, 20)
    assert (rot - torch.rot90(ref, -1, dims=(1, 2))).abs().mean() < 0.02  # turned clockwise, as displayed
    assert (rot - torch.rot90(ref, 1, dims=(1, 2))).abs().mean() > 0.1


def test_bad_files_raise_errors_naming_them(tmp_path, odd_dir):
    (tmp_path / 'empty.png').write_bytes(b'')
    for path, reason in [(os.path.join(odd_dir, 'truncated.png'), 'unreadable'),
                         (os.path.join(odd_dir, 'not-an-image.png'), 'not an image'),
                         (str(tmp_path / 'empty.png'), 'empty file')]:
        with pytest.raises(ImageError, match=reason) as info:
            load_image(path)
        assert path in str(info.value) and info.value.path == path
    good, bad = check_images(list_images(odd_dir))
    assert len(good) == 6 and sorted(os.path.basename(e.path) for e in bad) == ['not-an-image.png', 'truncated.png']
