"""Inputs: decoding image files (:mod:`~lvae.data.images`), where datasets live (:mod:`~lvae.data.paths`), downloading
the paper's test sets (:mod:`~lvae.data.downloads`) and the random crops that training reads (:mod:`~lvae.data.crops`).

Pixels are in [0, 1] (float32, (3, H, W)) wherever a tensor leaves this package.
"""
from lvae.data.crops import ImageFolderCrops, parse_transform, random_crop_flip, reflect_pad_to
from lvae.data.downloads import DownloadError, download_dataset, find_or_download
from lvae.data.images import (ImageError, check_images, decode_image, list_images, load_image, read_image_file,
                              to_tensor)
from lvae.data.paths import dataset_name, dataset_path, known_datasets

__all__ = ['DownloadError', 'ImageError', 'ImageFolderCrops', 'check_images', 'dataset_name', 'dataset_path',
           'decode_image', 'download_dataset', 'find_or_download', 'known_datasets', 'list_images', 'load_image',
           'parse_transform', 'random_crop_flip', 'read_image_file', 'reflect_pad_to', 'to_tensor']
