"""train-var-rate.py: flag parsing, LR schedule, the training step's skip rules, data robustness, DDP on CPU,
kill -9 and resume."""
import argparse
import contextlib
import glob
import importlib.util
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from lvae.checkpoint import model_from_checkpoint
from lvae.cli import parse_model_args
from lvae.data import ImageFolderCrops, reflect_pad_to
from lvae.images import load_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'train-var-rate.py')
CKPTS = ('last.pt', 'last_ema.pt', 'best.pt')


def load_script():
    spec = importlib.util.spec_from_file_location('train_var_rate', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train = load_script()


@pytest.fixture
def photos(shared_dir, tmp_path):
    """A training folder: 4 photos of ../shared plus an unreadable and a truncated file (copies in tmp)."""
    folder = tmp_path / 'train'
    folder.mkdir()
    for name in sorted(os.listdir(os.path.join(shared_dir, 'datasets', 'photos')))[:4]:
        shutil.copy(os.path.join(shared_dir, 'datasets', 'photos', name), folder)
    for name in ('truncated.png', 'not-an-image.png'):
        shutil.copy(os.path.join(shared_dir, 'datasets', 'odd', name), folder / f'bad-{name}')
    return folder


@pytest.fixture
def valset(kodak_dir, tmp_path):
    """A one-image validation folder named 'kodak', so the shipped VTM anchor applies (copy in tmp)."""
    folder = tmp_path / 'val' / 'kodak'
    folder.mkdir(parents=True)
    shutil.copy(os.path.join(kodak_dir, sorted(os.listdir(kodak_dir))[0]), folder)
    return folder


def cli(train_dir, val_dir, runs, *extra):
    return ['--model', 'rd_model_tiny', '--trainset', str(train_dir), '--valset', str(val_dir),
            '--transform', 'crop=64', '--batch_size', '2', '--val_steps', '4', '--device', 'cpu',
            '--workers', '0', '--log_interval', '1', '--runs_root', str(runs), '--fixseed', *extra]


def run(args, launcher=(sys.executable,), env=None, **kw):
    env = {**(os.environ if env is None else env), 'OMP_NUM_THREADS': '1', 'WANDB_SILENT': 'true'}
    return subprocess.run([*launcher, SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


# ------------------------------------------------------------------------------------------------ flags
def test_model_args_are_literals():
    assert parse_model_args('lmb_range=(4,2048), smooth_mean=False') == {'lmb_range': (4, 2048),
                                                                               'smooth_mean': False}
    assert parse_model_args('') == {}
    for bad, words in [("__import__('os').system('touch /tmp/x')", 'KEY=VALUE'),
                       ("lmb_range=__import__('os').getcwd()", 'literal'),
                       ('z_dims=[4]*5', 'literal'), ('nope=3', 'unknown config field'), ('lmb_range=(4,', 'KEY=VALUE')]:
        with pytest.raises(ValueError, match=words):
            parse_model_args(bad)


def test_model_args_code_is_rejected_before_anything_runs(tmp_path):
    marker = tmp_path / 'x'
    result = run(['--model_args', f"__import__('os').system('touch {marker}')", '--runs_root', str(tmp_path),
                  '--trainset', str(tmp_path), '--device', 'cpu'])
    assert result.returncode == 2
    assert 'error: --model_args' in result.stderr and 'KEY=VALUE' in result.stderr
    assert 'Traceback' not in result.stderr
    assert not marker.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize('flags, words', [(['--transform', 'crop=100'], 'multiple of 64'),
                                          (['--lr_sched', 'linear'], 'lr_sched'),
                                          (['--batch_size', '0'], 'batch_size'),
                                          (['--model', 'rd_nope'], 'unknown model')])
def test_bad_flags_give_one_line_errors(flags, words):
    args = train.get_parser().parse_args(flags)
    with pytest.raises(ValueError, match=words):  # main() prints it as one line, exit status 2
        train.check_args(args)


def test_lr_schedule():
    f = train.lr_factor
    T = 1000
    assert f(0, T) == f(499, T) == 1.0                                 # constant for the first half
    assert f(500, T) == pytest.approx(1.0)                             # cosine starts at 1 ...
    assert f(750, T) == pytest.approx(0.01 + 0.99 * 0.5)               # ... is half-way at 3/4 ...
    assert f(1000, T) == pytest.approx(0.01)                           # ... and ends at lrf_min
    assert all(f(i, T) >= f(i + 1, T) for i in range(T))
    assert f(0, T, warmup=10) == pytest.approx(0.1) and f(9, T, warmup=10) == 1.0
    assert f(0, T, 'cos') == 1.0 and f(T // 2, T, 'cos') == pytest.approx(0.505)
    assert f(0, T, 'const-0.2-cos') == f(199, T, 'const-0.2-cos') == 1.0 > f(300, T, 'const-0.2-cos')
    assert f(123, T, 'const', lrf_min=0.5) == 1.0


def test_update_classification():
    t = torch.tensor
    recent = torch.full((train.SPIKE_WINDOW,), math.nan)
    recent[-train.SPIKE_MIN_HISTORY:] = 1.0

    def classify(loss, norm, norms=recent):
        return tuple(bool(flag) for flag in train.classify_update(t(loss), t(norm), norms))
    assert classify(1.0, 5.0) == (False, False)
    assert classify(1.0, 10.5) == (False, True)
    fewer = recent.clone()
    fewer[-train.SPIKE_MIN_HISTORY] = math.nan
    assert classify(1.0, 10.5, fewer) == (False, False)                   # not enough history yet
    assert classify(math.nan, 1.0) == (True, False)
    assert classify(1.0, math.inf) == (True, False)
    assert classify(math.inf, 1e9) == (True, False)                       # non-finite, not counted as a spike
    halves = recent.clone()
    halves[-10:] = 3.0                                                     # median of 1,...,1,3,...,3: 2
    assert classify(1.0, 19.0, halves) == (False, False) and classify(1.0, 21.0, halves) == (False, True)


class Linear(torch.nn.Module):
    """A stand-in for the model in the training step: loss = gain * <w, mean colour of the batch> (a constant
    gradient), with bpp and PSNR as tensors (what a step free of host-device synchronisation needs)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.gain = 1.0

    def forward(self, im):
        loss = self.gain * (self.w * im.mean(dim=(0, 2, 3))).sum()
        return {'loss': loss, 'bppix': 2 * loss.detach(), 'psnr': -loss.detach()}


@contextlib.contextmanager
def no_host_reads(monkeypatch, device):
    """Make every read of a tensor's value by the host raise (and, on CUDA, every synchronisation)."""
    def refuse(*args, **kwargs):
        raise AssertionError('the training step read a tensor on the host')
    with monkeypatch.context() as patch:
        for name in ('item', 'tolist', 'numpy', '__bool__', '__int__', '__float__', '__index__'):
            patch.setattr(torch.Tensor, name, refuse)
        if device.type == 'cuda':
            torch.cuda.set_sync_debug_mode('error')
        try:
            yield
        finally:
            if device.type == 'cuda':
                torch.cuda.set_sync_debug_mode('default')


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device'))])
def test_training_step_skips_bad_updates_on_the_device(monkeypatch, device):
    """forward_backward + update: non-finite updates and gradient spikes leave weights, Adam and EMA untouched
    and are counted, a spike halves the LR, and no step reads a tensor on the host."""
    from timm.utils import ModelEmaV3
    device = torch.device(device)
    model = Linear().to(device)
    state = train.TrainState(model, torch.optim.Adam(model.parameters(), lr=0.01, fused=True),
                             train.UpdateGuard(device), ema=ModelEmaV3(model, decay=0.9, use_warmup=True))
    args = argparse.Namespace(accum_num=2, amp='none', grad_clip=0.0, lr=0.01, iterations=100, lr_sched='const',
                              lr_warmup=0, lrf_min=0.01)
    im = torch.rand(2, 3, 8, 8, device=device)

    def step(images, gain=1.0):
        """One update (two micro-batches); returns the figures, read after the step."""
        model.gain = gain
        with no_host_reads(monkeypatch, device):
            for group in state.optimizer.param_groups:
                group['lr'] = state.lr(args)
            batches = iter([(0, (images, torch.tensor([1, 0]))), (0, (images, torch.tensor([0, 0])))])
            figures, n = train.forward_backward(model, batches, state, args, train.Processes(), device)
            train.update(state, args, figures)
        state.iter += 1
        assert n == 4
        return figures

    def snapshot():
        return (model.w.detach().clone(), state.ema.module.w.detach().clone(),
                float(state.optimizer.state[model.w].get('step', 0)))

    for _ in range(train.SPIKE_MIN_HISTORY):
        before = snapshot()
        figures = step(im)
        assert not torch.equal(snapshot()[0], before[0]) and snapshot()[2] == before[2] + 1
    assert figures.tolist() == pytest.approx([figures[0].item(), 2 * figures[0].item(), -figures[0].item()])
    assert int(state.skipped_images) == train.SPIKE_MIN_HISTORY

    before = snapshot()
    step(torch.full_like(im, math.nan))                                       # non-finite loss and gradient
    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(snapshot(), before))
    assert torch.isfinite(model.w).all()
    step(im, gain=100.0)                                                      # a gradient spike
    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(snapshot(), before))
    counts = state.guard.state_dict()
    assert (counts['bad_steps'], counts['spikes'], counts['lr_scale']) == (1, 1, 0.5)
    assert len(counts['grad_norms']) == train.SPIKE_MIN_HISTORY
    assert float(state.lr(args)) == pytest.approx(0.005)

    step(im)                                                                  # accepted again
    assert not torch.equal(snapshot()[0], before[0])
    assert int(state.guard.bad_in_row) == 0 and int(state.guard.longest_bad_run) == 1
    assert float(state.optimizer.param_groups[0]['lr']) == pytest.approx(0.005)


# ------------------------------------------------------------------------------------------------ data
def test_reflect_padding_of_small_images(odd_dir):
    im = load_image(os.path.join(odd_dir, 'tiny-24x16.png'))                  # (3, 16, 24)
    padded = reflect_pad_to(im, 64)
    assert padded.shape == (3, 64, 64)
    assert torch.equal(padded[:, :16, :24], im)
    assert torch.equal(padded[:, 16, :24], im[:, 14])                         # reflection, not replication
    assert reflect_pad_to(torch.rand(3, 1, 5), 8).shape == (3, 8, 8)


def test_unreadable_images_are_skipped_and_counted(photos):
    data = ImageFolderCrops(photos, crop=128)
    assert len(data) == 6
    with pytest.warns(RuntimeWarning, match='skipping unreadable training image') as caught:
        items = [data[i] for i in range(len(data))]
    assert {str(w.message).split(': ')[1] for w in caught} >= {str(photos / 'bad-truncated.png'),
                                                               str(photos / 'bad-not-an-image.png')}
    assert all(crop.shape == (3, 128, 128) and 0 <= crop.min() and crop.max() <= 1 for crop, _ in items)
    assert sum(skipped for _, skipped in items) >= 2


# ------------------------------------------------------------------------------------------------ runs
def test_nonfinite_losses_stop_with_a_checkpoint(photos, valset, tmp_path):
    """An absurd LR blows the weights up: the non-finite updates are skipped, counted, and the run stops."""
    result = run(cli(photos, valset, tmp_path / 'runs', '--iterations', '30', '--eval_interval', '100',
                     '--lr', '1e30', '--max_bad_steps', '3', '--name', 'boom', '--no-ema'), timeout=300)
    assert result.returncode == train.EXIT_BAD_STEPS, result.stderr[-2000:]
    assert '3 non-finite losses in a row' in result.stderr
    failed = load(tmp_path / 'runs' / 'lvae' / 'boom' / 'failed.pt')
    assert failed['counters']['bad_steps'] == 3 and failed['iter'] < 30


def test_wandb_online_without_credentials_stops_before_any_work(shared_dir, kodak_dir, tmp_path):
    """--wbmode online on a machine without a wandb login: one line saying what to do, exit status 2, no run
    folder."""
    home = tmp_path / 'home'
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith('WANDB_') and k != 'NETRC'}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / '.config'))
    result = run(['--model', 'rd_model_tiny', '--wbmode', 'online', '--trainset',
                  os.path.join(shared_dir, 'datasets', 'photos'), '--valset', kodak_dir, '--val_images', '2',
                  '--iterations', '2', '--batch_size', '2', '--device', 'cpu', '--runs_root', str(tmp_path / 'runs')],
                 env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1
    assert all(words in errors[0] for words in ('wandb login', 'WANDB_API_KEY', '--wbmode offline'))
    assert not (tmp_path / 'runs').exists()


@pytest.mark.slow
def test_kill_then_resume(photos, valset, tmp_path):
    """SIGKILL mid-training, then --resume: iteration, LR position and EMA step continue; every checkpoint
    file ever seen loads with weights_only=True."""
    runs = tmp_path / 'runs'
    folder = runs / 'lvae' / 'killed'
    args = cli(photos, valset, runs, '--iterations', '24', '--eval_interval', '12', '--save_interval', '2',
               '--name', 'killed', '--lr_warmup', '4', '--ema_decay', '0.99')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'WANDB_SILENT': 'true'}
    proc = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seen = {}
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            for path in glob.glob(str(folder / '*.pt')):
                seen[path] = load(path)['iter']          # a torn file would raise here
            if seen.get(str(folder / 'last.pt'), 0) >= 4:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    for path in glob.glob(str(folder / '*.pt')):
        load(path)
    killed = load(folder / 'last.pt')
    assert 4 <= killed['iter'] < 24 and killed['ema_step'] == killed['iter']
    assert set(killed) >= {'model', 'model_name', 'config', 'iter', 'optimizer', 'ema', 'scheduler', 'rng',
                           'wandb_id', 'args'}

    result = run(['--resume', str(folder), '--workers', '1'], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lr_at = 2e-4 * train.lr_factor(killed['iter'], 24, 'const-0.5-cos', 4, 0.01)  # --lr default
    assert f'resuming at iteration {killed["iter"]} (lr {lr_at:.6g}, EMA step {killed["ema_step"]})' in result.stdout
    final = load(folder / 'last.pt')
    assert final['iter'] == 24 and final['ema_step'] == 24 and final['wandb_id'] == killed['wandb_id']
    assert final['args']['workers'] == 1 and final['args']['iterations'] == 24     # saved flags + overrides
    assert final['optimizer']['param_groups'][0]['lr'] == pytest.approx(2e-4 * train.lr_factor(23, 24, warmup=4))
    steps = [s['step'] for s in final['optimizer']['state'].values()]
    assert all(float(s) == 24 for s in steps)                                       # Adam continued
    assert load(folder / 'last_ema.pt')['iter'] == 24 and load(folder / 'best.pt')['iter'] in (0, 12, 24)
    assert not glob.glob(str(folder / '.*.tmp'))


@pytest.mark.slow
def test_ddp_two_ranks_on_cpu(photos, valset, tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks train, wandb offline logs, three checkpoints."""
    runs = tmp_path / 'runs'
    result = run(cli(photos, valset, runs, '--iterations', '4', '--eval_interval', '2', '--name', 'ddp',
                     '--wbmode', 'offline', '--workers', '1', '--accum_num', '2'),
                 launcher=(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'),
                 timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'x 2 process(es)' in result.stdout and '8 images per update' in result.stdout
    for rank in (0, 1):
        assert f'rank {rank}/2: 4 updates on 16 images in ' in result.stdout
    folder = runs / 'lvae' / 'ddp'
    ckpts = {name: load(folder / name) for name in CKPTS}
    assert ckpts['last.pt']['iter'] == ckpts['last_ema.pt']['iter'] == 4
    assert len(ckpts['last.pt']['rng']) == 2
    assert ckpts['last_ema.pt']['config'] == ckpts['last.pt']['config']
    model, _ = model_from_checkpoint(folder / 'last_ema.pt')       # what eval-var-rate.py --weights does
    assert all(torch.equal(v, ckpts['last_ema.pt']['model'][k]) for k, v in model.state_dict().items())
    assert (folder / 'val_rd.png').stat().st_size > 0
    wandb_files = glob.glob(str(folder / 'wandb' / 'offline-run-*' / 'run-*.wandb'))
    assert len(wandb_files) == 1
    logged = open(wandb_files[0], 'rb').read()
    for key in ('train/loss', 'train/bpp', 'train/psnr', 'train/lr', 'train/grad_norm', 'val/loss', 'val/bpp',
                'val/psnr', 'val/bd_rate', 'val/rd_curve'):
        assert key.encode() in logged, key


@pytest.mark.slow
def test_ddp_run_validated_on_all_of_kodak(kodak_dir, shared_dir, tmp_path):
    """The CPU demo's torchrun command: 40 iterations of rd_model_tiny on 2 CPU ranks, validated on all of
    Kodak."""
    result = run(['--model', 'rd_model_tiny', '--trainset', os.path.join(shared_dir, 'datasets', 'photos'),
                  '--valset', kodak_dir, '--iterations', '40', '--batch_size', '2', '--eval_interval', '20',
                  '--device', 'cpu', '--wbmode', 'offline', '--runs_root', str(tmp_path), '--name', 'done'],
                 launcher=(sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2'),
                 timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in CKPTS:
        assert load(tmp_path / 'lvae' / 'done' / name)['iter'] in (0, 20, 40)
