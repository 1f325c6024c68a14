"""Training as a library: the paper's recipe (:class:`Recipe`) and its update (:class:`Trainer`).

>>> import torch, lvae, lvae.training
>>> model = lvae.accel.prepare(lvae.get_model('rd_model_tiny'), 'cpu').train()
>>> trainer = lvae.training.Trainer(model, lvae.training.Recipe(iterations=1000))
>>> out = trainer.step(torch.rand(4, 3, 64, 64))     # one update; out['loss'], out['lr'], ...

``train-var-rate.py`` drives the same trainer with data, DDP, validation and checkpoints
(``lvae.training.runs``, ``lvae.training.distributed``).
"""
from lvae.training.recipe import Recipe
from lvae.training.trainer import Trainer

__all__ = ['Recipe', 'Trainer']
