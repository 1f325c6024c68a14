"""What a run tells: the progress bar and training logs (rank 0), wandb, the throughput summary."""
import time
import warnings

import torch
from tqdm import tqdm

from lvae.evaluation.anchors import resolve_anchor_curve
from lvae.cli import UsageError
from lvae.training.validation import ValidationRecord, set_id


class NoLogging:
    """What the run logs to with ``--wbmode disabled``: nothing (wandb is not even imported)."""

    def log(self, data, step=None):
        pass

    def finish(self):
        pass


def check_wandb_login(settings):
    """``--wbmode online`` needs wandb credentials: refuse (UsageError) before any work when none are found.
    Looks where wandb does (WANDB_API_KEY, an identity token file, wandb's settings, ~/.netrc) without network."""
    if settings.wbmode != 'online':
        return
    import wandb
    try:
        found = wandb.login(verify=False, prompt=False)
    except wandb.Error as e:
        raise UsageError(f'--wbmode online: wandb credentials are unusable ({e})') from e
    if not found:
        raise UsageError('--wbmode online needs a wandb login: run `wandb login` once, or set WANDB_API_KEY, '
                         'or use --wbmode offline (upload later with `wandb sync`)')


class RunLog:
    """Rank 0's validation set, its record in the run folder and the wandb run (``wandb.init`` with the run's flags,
    resumed by id; :class:`NoLogging` when disabled). ``test``: the validation :class:`~lvae.evaluation.TestSet`
    (its first ``--val_images`` are validated); :meth:`reference` gives the curve that validation BD-rates are
    measured against; ``record`` is the run's :class:`~lvae.training.validation.ValidationRecord` for this set
    (``legacy_best``: see there)."""

    def __init__(self, settings, folder, test, wandb_id, legacy_best=None):
        for e in test.skipped:
            warnings.warn(f'validation image skipped: {e}', RuntimeWarning)
        self.test = test.head(settings.val_images)
        self.truth = self.test.source is not None
        self.convention = self.test.convention
        self.record = ValidationRecord(folder, set_id(self.test.record, settings.val_steps), legacy_best)
        self.enabled = settings.wbmode != 'disabled'
        if self.enabled:
            import wandb
            s = settings
            self.wb = wandb.init(project=s.wbproject, entity=s.wbentity, group=s.wbgroup, name=s.name,
                                 tags=[t for t in s.wbtags.split(',') if t], config=s.to_flags(), dir=folder,
                                 mode=s.wbmode, id=wandb_id, resume='allow')
        else:
            self.wb = NoLogging()

    def reference(self, test_psnr):
        """``(label, bpp, psnr)`` of the set's anchor curve (a source's true R(D) over ``test_psnr``), or None."""
        found = resolve_anchor_curve(self.test.default_anchor, self.test.name, missing_ok=True, test_psnr=test_psnr)
        return None if found is None else (found[0], found[1]['bpp'], found[1][self.convention])

    def log_validation(self, metrics, png, seconds, step, stages=None):
        """``metrics``, the plot ``png`` and, per decoder stage and lambda, the rate and active units of ``stages``
        (:func:`lvae.evaluation.stages.stage_rates`) to wandb."""
        log = {**metrics, 'val/seconds': seconds}
        for j, lmb in enumerate((stages or {}).get('lambdas', ())):
            for s, side in enumerate(stages['sides']):
                log[f'stages/bpp {side} @{lmb:g}'] = stages['bpp'][j][s]
                log[f'stages/active {side} @{lmb:g}'] = stages['active'][j][s]
        if self.enabled and png is not None:
            import wandb
            log['val/rd_curve'] = wandb.Image(png)
        self.wb.log(log, step=step)


class Progress:
    """The progress bar (rank 0), training logs every ``log_interval`` updates, and the throughput summary. The
    figures stay on the device between logs."""

    def __init__(self, settings, trainer, procs, wb):
        self.settings, self.procs, self.wb = settings, procs, wb
        self.bar = tqdm(total=trainer.recipe.iterations, initial=trainer.iter, disable=not procs.master,
                        dynamic_ncols=True, desc=settings.name if procs.master else None)
        self.start_iter, self.images = trainer.iter, 0
        self.skipped = None
        self.t_start = self.t_log = time.time()

    def log_due(self, it):
        return it % self.settings.log_interval == 0 or it == self.settings.recipe.iterations

    def step(self, trainer, run, out, images, device):
        """Count an update; when a log is due (rank 0), read its figures (a host-device synchronisation), log them
        to wandb and the bar, and report updates skipped since the last log."""
        self.bar.update(1)
        self.images += images
        if not self.procs.master or not self.log_due(trainer.iter):
            return
        loss, bpp, psnr, lr, grad_norm = torch.stack([out[k].float() for k in (
            'loss', 'bppix', 'psnr', 'lr', 'grad_norm')]).tolist()
        counters = {k: int(v) for k, v in trainer.counters.items()}
        log = {'train/loss': loss, 'train/bpp': bpp, 'train/psnr': psnr, 'train/lr': lr, 'train/grad_norm': grad_norm,
               'train/epoch': run.epoch, 'train/sec_per_iter': (time.time() - self.t_log) / self.settings.log_interval,
               'train/skipped_images': int(run.skipped_images), 'train/bad_steps': counters['bad_steps'],
               'train/grad_spikes': counters['spikes']}
        self.t_log = time.time()
        skipped = (counters['bad_steps'], counters['spikes'])
        if self.skipped is not None and skipped != self.skipped:
            tqdm.write(f'[iter {trainer.iter}] since the last log: non-finite updates skipped: '
                       f'{skipped[0] - self.skipped[0]}, gradient spikes taken at a tenth of the LR: '
                       f'{skipped[1] - self.skipped[1]} (last loss {loss:.4g}, grad norm {grad_norm:.4g})')
        self.skipped = skipped
        post = {'loss': f'{loss:.4f}', 'bpp': f'{bpp:.3f}', 'psnr': f'{psnr:.2f}', 'lr': f'{lr:.2e}',
                'gnorm': f'{grad_norm:.3g}'}
        if device.type == 'cuda':
            log['train/peak_mem_gb'] = torch.cuda.max_memory_allocated(device) / 2**30
            post['mem'] = f'{log["train/peak_mem_gb"]:.1f}G'
        self.bar.set_postfix(post)
        self.wb.log(log, step=trainer.iter)

    def close(self, trainer, run, done, folder):
        """Close the bar, print this process's throughput and (rank 0, when the run is done) its summary."""
        self.bar.close()
        seconds = time.time() - self.t_start
        print(f'rank {self.procs.rank}/{self.procs.world}: {trainer.iter - self.start_iter} updates on {self.images} '
              f'images in {seconds:.0f} s ({self.images / max(seconds, 1e-9):.1f} images/s, validation and '
              f'checkpoints included)', flush=True)
        if self.procs.master and done:
            c = {k: int(v) for k, v in trainer.counters.items()}
            print(f'done: {trainer.iter} iterations; non-finite updates skipped: {c["bad_steps"]}, gradient '
                  f'spikes: {c["spikes"]}, unreadable images skipped: {int(run.skipped_images)}; checkpoints in '
                  f'{folder}')


def describe(settings, trainer, procs, device, trainset, folder, resumed, changes=None):
    """The run's opening line: model size, processes, data, images per update, folder, where a resume starts and
    the flags it ``changes`` (``{flag: [before, after]}``)."""
    n_params = sum(p.numel() for p in trainer.model.parameters())
    ema = trainer.iter if trainer.ema is not None else None
    line = (f'{settings.model}: {n_params / 1e6:.2f}M parameters on {device} x {procs.world} process(es); '
            f'{trainset}; {settings.images_per_update * procs.world} images per update; run folder {folder}')
    if resumed:
        line += f'; resuming at iteration {trainer.iter} (lr {trainer.lr:.6g}, EMA step {ema})'
    if changes:
        line += '; changed on resume: ' + ', '.join(f'--{k} {old!r} -> {new!r}' for k, (old, new) in changes.items())
    return line
