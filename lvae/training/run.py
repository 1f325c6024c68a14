"""A training run's state in one object: :class:`TrainingRun` (its settings, processes, device, folder and claim, model
and trainer, data, log and progress), its resources held in one ``ExitStack`` and closed in one place, and what a run
does between updates (checkpoints, validation, the end of the run). ``train-var-rate.py`` drives it::

    run = TrainingRun.start(settings, procs, resumed)   # nothing is claimed or written when this raises
    with run:                                            # stops, faults and clean-up handled on the way out
        run.begin()
        while run.running():
            run.update()
    return run.status
"""
import contextlib
import os
import secrets
import signal
import sys

from tqdm import tqdm

import lvae
from lvae import accel
from lvae.cli import UsageError
from lvae.evaluation import as_test_set
from lvae.models import model_from_checkpoint, registered_config
from lvae.training.distributed import Processes
from lvae.training.init import initialise_
from lvae.training.logs import Progress, RunLog, check_wandb_login, describe
from lvae.training.runs import (RunClaim, RunState, continue_run, prepare_run_folder, repair_last_ema, save_checkpoints,
                                seed_everything, write_args)
from lvae.training.signals import StopRequested, StopSignals
from lvae.training.trainer import Trainer
from lvae.training.trainset import endless_batches, training_set
from lvae.training.validation import run_validation

EXIT_BAD_STEPS = 3  # exit status after --max_bad_steps non-finite losses in a row
EXIT_IO = 74        # a checkpoint or run file could not be written (sysexits' EX_IOERR)
ELASTIC_WAIT = 60   # seconds a restarted torchrun worker waits for the dead worker group's hold on the run folder
VALIDATION_FLAGS = {'valset', 'val_steps', 'val_images'}


class TrainingRun:
    """One process's part of a run (see the module docstring). ``resumed``: ``(folder, last.pt, flag changes)`` of
    the run it continues, or ``(None, None, {})``."""

    def __init__(self, settings, procs, resumed):
        self.settings, self.procs = settings, procs
        self.folder, self.ckpt, self.changes = resumed
        self.recipe = settings.recipe
        self.stack = contextlib.ExitStack()
        self.status = self.log = self.saved = self.stop = None

    @classmethod
    def start(cls, settings, procs=None, resumed=(None, None, {})):
        """Check everything that can be checked (wandb login, data, validation set, weights), then claim the run's
        folder: a bad setting raises (ValueError, FileNotFoundError) before anything is claimed or written."""
        run = cls(settings, procs or Processes(), resumed)
        run.device = run.procs.init(settings.device)
        run.stack.callback(run.procs.close)
        try:
            run._prepare()
        except BaseException:
            run.stack.close()
            raise
        return run

    def _prepare(self):
        s, procs = self.settings, self.procs
        procs.from_master(lambda: check_wandb_login(s))
        self.trainset = training_set(s.trainset, **s.transform_kw)
        if max(1, len(self.trainset) // procs.world) < s.batch_size:
            raise UsageError(f'{len(self.trainset)} training images cannot fill one batch of {s.batch_size} per '
                             f'process on {procs.world} process(es)')
        self.valset = procs.on_master(lambda: as_test_set(s.valset, progress=False))  # decoded once, on rank 0
        if s.fixseed:
            seed_everything(s.seed + procs.rank)
        if self.ckpt:
            model, _ = model_from_checkpoint(self.ckpt)
        else:  # bad --weights (missing, another model's, not weights) fail here, before a folder is claimed
            model = lvae.get_model(s.model, pretrained=s.weights or False, **s.model_kw)
            if not s.weights:
                initialise_(model, self.recipe.init)
        self.claim = procs.on_master(self._claim)  # last: a bad setting leaves no folder behind
        if self.claim:
            self.stack.callback(self.claim.release)
        self.folder = procs.broadcast(self.claim.folder if self.claim else None)
        s.name = os.path.basename(os.path.normpath(self.folder))
        self.trainer = Trainer(accel.prepare(model, self.device, compile=s.compile).train(), self.recipe)
        self.state = continue_run(self.ckpt, self.trainer, procs, self.device, s.seed, self.changes) \
            if self.ckpt else RunState()
        self.batches = endless_batches(self.trainset, s.batch_size, procs.rank, procs.world, s.seed, s.workers,
                                       pin_memory=self.device.type == 'cuda', epoch=self.state.epoch)
        self.stack.callback(self.batches.close)  # the loader's workers leave signals to us: end them here

    def _claim(self):
        """Rank 0's claim on the run's folder (:class:`~lvae.training.runs.RunClaim`): a new one, or the one it
        continues (a restarted torchrun worker waits for the dead group's hold to go)."""
        s = self.settings
        if self.folder:
            identity = {'model': s.model, 'config': self.ckpt['config'] if self.ckpt else
                        registered_config(s.model, s.model_kw), 'created': None}
            return RunClaim.existing(self.folder, identity, wait=ELASTIC_WAIT if self.procs.restarts else 0)
        return RunClaim.new(os.path.join(s.runs_root, s.wbproject), s.name, s.model,
                            registered_config(s.model, s.model_kw), self.procs.run_id)

    # ------------------------------------------------------------------------------------------------ the run
    def __enter__(self):
        self.stop = self.stack.enter_context(StopSignals())  # a stop ends the run cleanly from here on
        self.saved = self.trainer.iter if self.ckpt else None
        if self.procs.master:
            try:
                self._open_folder()
            except OSError as e:
                print(f'error: cannot write to the run folder {self.folder}: {e}', file=sys.stderr)
                self.status = EXIT_IO
                return self
        self.progress = Progress(self.settings, self.trainer, self.procs, self.log.wb if self.log else None)
        return self

    def _open_folder(self):
        s, trainer = self.settings, self.trainer
        prepare_run_folder(self.folder, self.procs.run_id)
        if self.ckpt:
            repair_last_ema(self.folder, self.ckpt)
        self.state.wandb_id = self.state.wandb_id or secrets.token_hex(4)  # fixed before wandb: a resume keeps it
        write_args(self.folder, s)
        legacy_best = self.ckpt.get('best_key') if self.ckpt and not VALIDATION_FLAGS & self.changes.keys() else None
        self.log = RunLog(s, self.folder, self.valset, self.state.wandb_id, legacy_best)
        self.stack.callback(self.log.wb.finish)
        print(describe(s, trainer, self.procs, self.device, self.trainset, self.folder, self.ckpt is not None,
                       self.changes), flush=True)

    def begin(self):
        """last.pt of iteration 0 (a stop during the first validation leaves a run to resume), then validation."""
        if self.status is not None:
            return
        if self.saved is None:
            self.checkpoint()
        self.validate_if_due()

    def running(self):
        return self.status is None and self.trainer.iter < self.recipe.iterations and \
            not self.procs.any(self.stop.requested)

    def update(self):
        """One update, its logs, and the checkpoint and validation when due; a run of non-finite updates ends it."""
        s, trainer = self.settings, self.trainer
        micro = []
        for _ in range(self.recipe.accum_num):
            self.state.epoch, (im, skipped) = next(self.batches)
            self.state.skipped_images += skipped.sum()
            micro.append(im)
        out = trainer.step(micro)
        self.progress.step(trainer, self.state, out, sum(len(im) for im in micro), self.device)
        if self.progress.log_due(trainer.iter) and int(trainer.counters['longest_bad_run']) >= s.max_bad_steps:
            self.checkpoint('failed.pt')
            if self.procs.master:
                print(f'\nerror: {s.max_bad_steps} non-finite losses in a row by iteration {trainer.iter} (lr '
                      f'{float(out["lr"]):.3g}); stopping. The failing state is in '
                      f'{os.path.join(self.folder, "failed.pt")}; last.pt holds the last checkpoint. Try a lower '
                      f'--lr, --grad_clip or --amp none.', file=sys.stderr)
            self.status = EXIT_BAD_STEPS
        elif trainer.iter % s.eval_interval == 0 or trainer.iter == self.recipe.iterations or (
                s.save_interval and trainer.iter % s.save_interval == 0):
            self.checkpoint()  # last.pt first, then the validation: a failure there leaves this iteration's
            self.validate_if_due()

    def checkpoint(self, name='last.pt'):
        with self.stop.shielded():
            save_checkpoints(self.folder, self.settings, self.trainer, self.state, self.procs, self.device, name)
        if name == 'last.pt':
            self.saved = self.trainer.iter

    def validate_if_due(self):
        """Rank 0 validates an iteration due for it, unless done (a stop abandons it at once: it is redone on
        resume); every rank waits."""
        it, s = self.trainer.iter, self.settings
        if self.procs.master and (it == 0 or it % s.eval_interval == 0 or it == self.recipe.iterations) \
                and not self.log.record.done(it):
            try:
                run_validation(self.folder, s, self.trainer, self.state, self.log, self.device, self.stop)
            except StopRequested:
                tqdm.write(f'validation of iteration {it} abandoned: it is redone on --resume')
        self.procs.barrier()

    def __exit__(self, kind, error, tb):
        """How the run ends: a stop asked for (a checkpoint, 128 + signal), a second Ctrl-C (130), a failed write
        (74, the previous last.pt intact); then every resource is closed, here and nowhere else."""
        master, folder = self.procs.master, self.folder
        if kind is None and self.status is None and self.procs.any(self.stop.requested):
            if self.saved != self.trainer.iter:
                self.checkpoint()
            signum = self.stop.signum or signal.SIGTERM
            if master:
                print(f'\nstopped by {signal.Signals(signum).name} at iteration {self.trainer.iter}: last.pt holds '
                      f'it; continue with --resume {folder}', file=sys.stderr)
            self.status = 128 + signum
        elif kind is not None and issubclass(kind, KeyboardInterrupt):
            if master:
                print(f'\ninterrupted at iteration {self.trainer.iter}; resume from the last checkpoint with '
                      f'--resume {folder}', file=sys.stderr)
            self.status = 130
        elif kind is not None and issubclass(kind, OSError):  # a full disk, an unwritable run folder
            if master:
                then = (f'last.pt holds iteration {self.saved}: free some space (or fix the folder), then continue '
                        f'with --resume {folder}') if self.saved is not None else \
                    f'no checkpoint was written: free some space, remove {folder} and start again'
                print(f'\nerror: {error}; {then}', file=sys.stderr)
            self.status = EXIT_IO
        if hasattr(self, 'progress'):
            self.progress.close(self.trainer, self.state, self.status is None, folder)
        self.stack.close()
        self.status = self.status or 0
        return kind is None or issubclass(kind, (KeyboardInterrupt, OSError))
