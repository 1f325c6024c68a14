"""Training as a library: the paper's recipe (:class:`Recipe`), its update (:class:`Trainer`), and a whole run from
typed settings (:class:`RunSettings`, :class:`TrainingRun`).

>>> import torch, lvae, lvae.training
>>> model = lvae.accel.prepare(lvae.get_model('rd_model_tiny'), 'cpu').train()
>>> trainer = lvae.training.Trainer(model, lvae.training.Recipe(iterations=1000))
>>> out = trainer.step(torch.rand(4, 3, 64, 64))     # one update; out['loss'], out['lr'], ...

``train-var-rate.py`` parses its flags into a :class:`RunSettings` and drives a :class:`TrainingRun` (data, DDP,
validation, checkpoints: ``lvae.training.run``, ``lvae.training.runs``, ``lvae.training.distributed``); a notebook
can do the same (docs/training.md, "Reading the script").
"""
from lvae.lazy import exports

_FROM = {'Recipe': 'lvae.training.recipe', 'RunSettings': 'lvae.training.settings', 'Trainer': 'lvae.training.trainer',
         'TrainingRun': 'lvae.training.run'}
__all__ = list(_FROM)
__getattr__, __dir__ = exports(__name__, _FROM)  # torch is imported at the first use of one of these
