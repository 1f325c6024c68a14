"""Checkpoint files: safe loading (``weights_only=True``), downloads into torch's hub cache, atomic saves.

A checkpoint is a dict. Weights sit under ``'model'`` (the authors' files and ours); a bare state-dict is
accepted too. Checkpoints written by ``train-var-rate.py`` also hold ``'model_name'`` and ``'config'``, so
:func:`lvae.models.model_from_checkpoint` rebuilds the model from the file alone. ``python -m lvae.checkpoint``
exports the lean weights of a training checkpoint (:func:`export_weights`).

- :mod:`~lvae.checkpoint.files`: reading (with a diagnosis of files that do not load) and atomic writing;
- :mod:`~lvae.checkpoint.remote`: files fetched over http(s), a checkpoint URL once into torch's hub cache;
- :mod:`~lvae.checkpoint.weights`: the weights a checkpoint holds, loaded strictly into a model, or exported.
"""
from lvae.checkpoint.remote import download, is_url, sha256_file
from lvae.checkpoint.files import CheckpointWriteError, load_file, save_checkpoint
from lvae.checkpoint.weights import export_weights, load_weights, state_dict_of

__all__ = ['CheckpointWriteError', 'download', 'export_weights', 'is_url', 'load_file', 'load_weights',
           'save_checkpoint', 'sha256_file', 'state_dict_of']
