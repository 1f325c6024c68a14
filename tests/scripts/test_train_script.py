"""train-var-rate.py: flag parsing, data robustness, runs that stop on non-finite losses, DDP on CPU, kill -9
and resume, a restarted torchrun worker, SIGTERM, and a run written by the earlier trainer continued."""
import contextlib
import glob
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import lvae
from lvae.data import ImageFolderCrops, load_image, reflect_pad_to
from lvae.models import model_from_checkpoint, parse_model_args, registered_config
from lvae.training import Recipe
from lvae.training.run import EXIT_BAD_STEPS
from lvae.training.runs import RunClaim, UsageError, find_run, repair_last_ema

from conftest import load_script  # tests/conftest.py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, 'train-var-rate.py')
CKPTS = ('last.pt', 'last_ema.pt', 'best.pt')


train = load_script('train-var-rate')


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


def run(args, launcher=None, env=None, timeout=None, **kw):
    """The script on ``args``: in this process (its ``main(argv)``, the output captured) unless it needs a process of
    its own (a launcher, an environment, a resource limit); returns a ``CompletedProcess`` either way."""
    if launcher is None and env is None and not kw:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train.main([str(a) for a in args])
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    env = {**(os.environ if env is None else env), 'OMP_NUM_THREADS': '1', 'WANDB_SILENT': 'true'}
    return subprocess.run([*(launcher or (sys.executable,)), SCRIPT, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


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
    assert result.returncode == EXIT_BAD_STEPS, result.stderr[-2000:]
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
    recipe = Recipe(iterations=24, lr_warmup=4)
    lr_at = killed['lr'] if killed['iter'] % 10 else recipe.held_lr(killed['iter'])   # held, or set anew
    assert f'resuming at iteration {killed["iter"]} (lr {lr_at:.6g}, EMA step {killed["ema_step"]})' in result.stdout
    final = load(folder / 'last.pt')
    assert final['iter'] == 24 and final['ema_step'] == 24 and final['wandb_id'] == killed['wandb_id']
    assert final['args']['workers'] == 1 and final['args']['iterations'] == 24     # saved flags + overrides
    assert final['optimizer']['param_groups'][0]['lr'] == pytest.approx(final['lr'])
    cut = math.log10(recipe.held_lr(23) / final['lr'])                              # spikes since iteration 20
    assert cut == pytest.approx(round(cut), abs=1e-6) and round(cut) >= 0
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


def children(pid):
    """The process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def wait_for_iteration(log_path, total, at_least, proc, timeout=300):
    """Poll the progress bar in ``log_path`` until it shows ``at_least``/``total`` iterations; returns the latest."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with open(log_path, errors='replace') as f:
            done = [int(n) for n in re.findall(rf'(\d+)/{total} \[', f.read())]
        if done and max(done) >= at_least:
            return max(done)
        time.sleep(0.05)
    raise AssertionError(f'the run did not reach iteration {at_least}: ' + open(log_path).read()[-2000:])


@pytest.mark.slow
def test_sigterm_finishes_the_update_writes_last_pt_and_resume_finishes(photos, valset, tmp_path):
    """SIGTERM to the whole process group (loader workers included) between checkpoints: the update finishes,
    last.pt and last_ema.pt hold its iteration, the exit status is 143 without a traceback; --resume ends the run."""
    runs = tmp_path / 'runs'
    folder = runs / 'lvae' / 'term'
    log = tmp_path / 'stderr.txt'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'WANDB_SILENT': 'true'}
    with open(log, 'w') as err:
        proc = subprocess.Popen([sys.executable, SCRIPT, *cli(photos, valset, runs, '--iterations', '40',
                                                             '--eval_interval', '100', '--name', 'term',
                                                             '--workers', '2')],
                                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            seen = wait_for_iteration(log, 40, 5, proc)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    stderr = open(log).read()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert 'Traceback' not in stderr
    last, ema = load(folder / 'last.pt'), load(folder / 'last_ema.pt')
    assert seen <= last['iter'] < 40 and ema['iter'] == last['iter']
    assert f'stopped by SIGTERM at iteration {last["iter"]}: last.pt holds it' in stderr

    result = run(['--resume', 'term', '--runs_root', str(runs)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'resuming at iteration {last["iter"]}' in result.stdout
    assert load(folder / 'last.pt')['iter'] == 40


def test_a_run_written_by_the_earlier_trainer_continues(photos, valset, tmp_path):
    """A last.pt of the trainer before lvae.training (no 'lr' nor 'recipe'; a whole-run LR scale; fewer
    counters) continues: its counters carry on and its LR returns to the schedule."""
    runs = tmp_path / 'runs'
    folder = runs / 'lvae' / 'old'
    result = run(cli(photos, valset, runs, '--iterations', '4', '--eval_interval', '4', '--name', 'old'), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = load(folder / 'last.pt')
    for key in ('lr', 'recipe'):
        del ckpt[key]
    ckpt['lr_scale'] = 0.5
    ckpt['counters'] = {'bad_steps': 2, 'spikes': 1, 'skipped_images': 7}
    ckpt['args'] = {k: v for k, v in ckpt['args'].items() if k != 'ema_warmup'}
    torch.save(ckpt, folder / 'last.pt')

    result = run(['--resume', str(folder), '--iterations', '8'], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'resuming at iteration 4 (lr 0.0002, EMA step 4)' in result.stdout
    final = load(folder / 'last.pt')
    assert final['iter'] == 8 and final['args']['ema_warmup'] == 10_000
    assert final['counters']['bad_steps'] >= 2 and final['counters']['spikes'] >= 1
    assert final['counters']['skipped_images'] >= 7


@pytest.mark.slow
def test_a_killed_torchrun_worker_costs_one_restart(photos, valset, tmp_path):
    """torchrun --max-restarts 1, an unnamed run, one worker killed with SIGKILL after the checkpoint of
    iteration 10: the restarted workers continue the run from last.pt in the same folder, and the job ends at
    --iterations with exit status 0."""
    runs = tmp_path / 'runs'
    log = tmp_path / 'stderr.txt'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'WANDB_SILENT': 'true'}
    args = [a for a in cli(photos, valset, runs, '--iterations', '30', '--eval_interval', '10')]
    with open(log, 'w') as err:
        proc = subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                                 '--max-restarts', '1', SCRIPT, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True)
        try:
            wait_for_iteration(log, 30, 13, proc)
            assert load(runs / 'lvae' / 'rd_model_tiny_1' / 'last.pt')['iter'] == 10
            workers = children(proc.pid)
            assert len(workers) == 2
            os.kill(workers[-1], signal.SIGKILL)
            stdout, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, open(log).read()[-3000:]
    assert os.listdir(runs / 'lvae') == ['rd_model_tiny_1']
    assert 'resuming at iteration 10' in stdout
    final = load(runs / 'lvae' / 'rd_model_tiny_1' / 'last.pt')
    assert final['iter'] == 30 and len(final['rng']) == 2


# ------------------------------------------------------------------------------------------------ run folders
def test_a_run_folder_is_claimed_once(tmp_path):
    """Unnamed runs get distinct folders; a named folder that holds a run is refused with the ways out; a run
    another process works on cannot be taken over until that process dies (the OS drops its lock)."""
    config = registered_config('rd_model_tiny')
    first = RunClaim.new(str(tmp_path), None, 'rd_model_tiny', config)
    second = RunClaim.new(str(tmp_path), None, 'rd_model_tiny', config)
    assert [os.path.basename(c.folder) for c in (first, second)] == ['rd_model_tiny_1', 'rd_model_tiny_2']
    RunClaim.new(str(tmp_path), 'mine', 'rd_model_tiny', config)
    with pytest.raises(UsageError, match=f'{tmp_path / "mine"} already holds a rd_model_tiny run .*another --name'):
        RunClaim.new(str(tmp_path), 'mine', 'rd_model_tiny', config)
    holder = subprocess.Popen([sys.executable, '-c', 'import sys; from lvae.training.runs import RunClaim; '
                               f'RunClaim.existing({str(first.folder)!r}, {{}}); print("held", flush=True); '
                               'sys.stdin.read()'], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first.release()
    try:
        assert holder.stdout.readline().strip() == 'held'
        with pytest.raises(UsageError, match=f'{first.folder} is in use by a running training process \\(pid '
                                             f'{holder.pid} '):
            RunClaim.existing(first.folder, {})
    finally:
        holder.kill()
        holder.wait()
    RunClaim.existing(first.folder, {}).release()


@pytest.mark.slow
def test_runs_started_together_never_share_a_folder(photos, valset, tmp_path):
    """Two runs started at once: without --name, two folders; with one --name, one run and one clean refusal."""
    runs = tmp_path / 'runs'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'WANDB_SILENT': 'true'}
    for name in ([], ['--name', 'same']):
        procs = [subprocess.Popen([sys.executable, SCRIPT, *cli(photos, valset, runs, '--iterations', '4', *name)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
        if not name:
            assert [rc for rc, _ in results] == [0, 0], results
            assert sorted(os.listdir(runs / 'lvae')) == ['rd_model_tiny_1', 'rd_model_tiny_2']
        else:
            assert sorted(rc for rc, _ in results) == [0, 2], results
            refusal = next(err for rc, err in results if rc == 2)
            errors = [line for line in refusal.splitlines() if line.startswith('error:')]
            assert len(errors) == 1 and f'{runs / "lvae" / "same"} already holds' in errors[0]
            assert '--resume' in errors[0] and '--name' in errors[0] and 'Traceback' not in refusal
            assert load(runs / 'lvae' / 'same' / 'last.pt')['iter'] == 4


def test_a_resume_keeps_what_defines_the_run_and_records_what_changes(photos, valset, tmp_path):
    """--resume: a flag that defines the run given with another value is an error naming both; a checkpoint of
    another model or one of weights only is refused naming the file; a changed --valset never has best.pt chosen
    by comparing two sets; every checkpoint names the model its weights are."""
    runs = tmp_path / 'runs'
    folder = runs / 'lvae' / 'r'
    assert run(cli(photos, valset, runs, '--iterations', '4', '--eval_interval', '2', '--name', 'r'),
               timeout=300).returncode == 0

    refused = run(['--resume', str(folder), '--model', 'rd_model_small'], timeout=120)
    assert refused.returncode == 2 and 'Traceback' not in refused.stderr
    assert "--model 'rd_model_small' (the run has 'rd_model_tiny')" in refused.stderr
    assert load(folder / 'last.pt')['iter'] == 4
    refused = run(['--resume', str(folder), '--iterations', '3'], timeout=120)   # nothing left to do: said so
    assert refused.returncode == 2 and 'is at iteration 4 (last.pt), which --iterations 3 does not pass' in \
        refused.stderr

    other_val = tmp_path / 'other' / 'kodak'
    other_val.mkdir(parents=True)
    shutil.copy(sorted(valset.iterdir())[0], other_val / 'copy-a.png')
    shutil.copy(sorted(valset.iterdir())[0], other_val / 'copy-b.png')
    result = run(['--resume', str(folder), '--iterations', '6', '--valset', str(other_val)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"changed on resume: --iterations 4 -> 6, --valset {str(valset)!r} -> {str(other_val)!r}" in result.stdout
    final = load(folder / 'last.pt')
    assert final['flag_changes'] == [{'iter': 4, 'changes': {'iterations': [4, 6],
                                                              'valset': [str(valset), str(other_val)]}}]
    lines = [json.loads(line) for line in open(folder / 'validations.jsonl')]
    sets = list(dict.fromkeys(line['validation'] for line in lines))
    assert [line['iter'] for line in lines] == [0, 2, 4, 4, 6] and len(sets) == 2   # 4 again, on the new set
    stages = lines[-1]['stages']   # each validation says where the rate goes, stage by stage
    assert stages['lambdas'] == [4.0, 64.0, 1024.0] and len(stages['bpp']) == 3 and len(stages['bpp'][0]) == 5
    assert all(0 <= a <= u for row in stages['active'] for a, u in zip(row, stages['units']))
    assert [line['validation'] for line in lines] == [sets[0]] * 3 + [sets[1]] * 2
    assert load(folder / 'best.pt')['validation'] == sets[1] and lines[-1]['best']
    assert load(folder / f'best-{sets[0]}.pt')['validation'] == sets[0]    # the old set's best, kept
    for path in folder.glob('*.pt'):
        ckpt = load(path)
        assert ckpt['model_name'] == 'rd_model_tiny' and registered_config(config=ckpt['config']) == \
            registered_config('rd_model_tiny'), path

    small = lvae.get_model('rd_model_small')
    foreign = {**final, 'model_name': 'rd_model_small', 'config': small.config.to_dict(), 'model': small.state_dict(),
               'args': {**final['args'], 'model': 'rd_model_small'}}
    torch.save(foreign, folder / 'last.pt')
    refused = run(['--resume', str(folder)], timeout=120)
    assert refused.returncode == 2
    assert f'{folder / "last.pt"} holds a rd_model_small, but the run in {folder} is a rd_model_tiny' in refused.stderr
    identity = json.loads((folder / 'run.json').read_text())
    (folder / 'run.json').write_text(json.dumps({k: v for k, v in identity.items() if k != 'config'}))
    torch.save(final, folder / 'last.pt')
    refused = run(['--resume', str(folder)], timeout=120)
    assert refused.returncode == 2 and 'run.json names the run\'s model (rd_model_tiny) but not its config' in \
        refused.stderr
    (folder / 'run.json').write_text(json.dumps({**identity, 'config': {**identity['config'], 'smooth_mean': False}}))
    refused = run(['--resume', str(folder)], timeout=120)
    assert refused.returncode == 2 and 'holds a rd_model_tiny whose smooth_mean is True, but the run in' in \
        refused.stderr and "is one whose smooth_mean is False (run.json)" in refused.stderr
    (folder / 'run.json').write_text(json.dumps(identity))
    torch.save({**final, 'args': {k: v for k, v in final['args'].items() if k != 'trainset'}}, folder / 'last.pt')
    refused = run(['--resume', str(folder), '--iterations', '8'], timeout=120)   # never today's default set
    assert refused.returncode == 2 and 'the checkpoint does not record --trainset, which defines the run' in \
        refused.stderr
    torch.save({'model': final['model'], 'config': final['config'], 'model_name': 'rd_model_tiny'}, folder / 'last.pt')
    refused = run(['--resume', str(folder)], timeout=120)
    assert refused.returncode == 2 and 'is not a training checkpoint (missing: iter, optimizer, args, epoch, rng)' \
        in refused.stderr and 'holds weights only' in refused.stderr


@pytest.mark.slow
def test_sigterm_during_the_first_validation_leaves_a_run_to_resume(photos, kodak_dir, tmp_path):
    """The stop handlers are in place before the first validation: SIGTERM during it abandons it at once, exit
    143 with last.pt of iteration 0; --resume redoes that validation and finishes."""
    runs = tmp_path / 'runs'
    folder = runs / 'lvae' / 'first'
    log = tmp_path / 'stderr.txt'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'WANDB_SILENT': 'true'}
    with open(log, 'w') as err:
        proc = subprocess.Popen([sys.executable, SCRIPT, *cli(photos, kodak_dir, runs, '--iterations', '2',
                                                             '--val_steps', '16', '--name', 'first')],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            deadline = time.time() + 120
            while not (folder / 'last_ema.pt').exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(1)  # inside the validation of 24 images at 16 lambdas
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    stderr = open(log).read()
    assert proc.returncode == 143, stderr[-2000:]
    assert 'Traceback' not in stderr and 'validation of iteration 0 abandoned' in stdout
    assert load(folder / 'last.pt')['iter'] == 0 and not (folder / 'validations.jsonl').exists()
    result = run(['--resume', str(folder), '--val_steps', '4', '--val_images', '1'], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [json.loads(line)['iter'] for line in open(folder / 'validations.jsonl')] == [0, 2]
    assert load(folder / 'last.pt')['iter'] == 2


@pytest.mark.skipif(not hasattr(signal, 'SIGXFSZ'), reason='needs POSIX file-size limits')
@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(photos, valset, tmp_path):
    """A checkpoint that cannot be written (a file-size limit stands in for a full disk): one line naming the file,
    exit 74, the previous last.pt intact."""
    import resource
    runs = tmp_path / 'runs'
    folder = runs / 'lvae' / 'full'
    assert run(cli(photos, valset, runs, '--iterations', '2', '--name', 'full'), timeout=300).returncode == 0

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))   # last.pt of rd_model_tiny takes 7.5 MB

    result = run(['--resume', str(folder), '--iterations', '4'], timeout=300, preexec_fn=small_disk)
    assert result.returncode == 74, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and errors[0].startswith(f'error: cannot write {folder / "last.pt"}: ')
    assert 'last.pt holds iteration 2' in errors[0] and 'Traceback' not in result.stderr
    assert load(folder / 'last.pt')['iter'] == 2 and not list(folder.glob('.*.tmp'))


def test_a_last_ema_of_another_iteration_is_rewritten_from_last_pt(tmp_path):
    """A stop between the two writes leaves last.pt (written first) one iteration ahead of last_ema.pt: the resume
    rewrites last_ema.pt from last.pt's EMA, so that the pair is again of one iteration."""
    ema = {'w': torch.ones(2)}
    last = {'model_name': 'm', 'config': {}, 'iter': 8, 'args': {}, 'epoch': 1, 'ema': ema, 'ema_step': 8}
    torch.save({'iter': 5, 'model': {'w': torch.zeros(2)}}, tmp_path / 'last_ema.pt')
    assert repair_last_ema(str(tmp_path), last)
    fixed = load(tmp_path / 'last_ema.pt')
    assert fixed['iter'] == 8 and torch.equal(fixed['model']['w'], ema['w'])
    assert not repair_last_ema(str(tmp_path), last)


def test_bad_weights_are_one_line_before_a_folder_is_claimed(tmp_path, capsys):
    """A missing file, another model's weights: one line, no run folder; the corrected command then starts."""
    small = tmp_path / 'small.pt'
    torch.save({'model': lvae.get_model('rd_model_small').state_dict()}, small)
    common = ['--model', 'rd_model_tiny', '--trainset', 'gaussian-64', '--valset', 'gaussian-64', '--val_images', '1',
              '--val_steps', '1', '--batch_size', '2', '--iterations', '1', '--device', 'cpu', '--workers', '0',
              '--runs_root', str(tmp_path / 'runs'), '--name', 'w']
    for weights, words in [(tmp_path / 'missing.pt', 'checkpoint not found'), (small, 'do not fit')]:
        assert train.main(common + ['--weights', str(weights)]) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and words in err and len(err.strip().splitlines()) == 1, err
        assert not os.path.exists(tmp_path / 'runs' / 'lvae' / 'w')
    assert train.main(common) == 0
    assert load(tmp_path / 'runs' / 'lvae' / 'w' / 'last.pt')['iter'] == 1


def test_a_resume_of_a_folder_without_last_pt_names_it_once(tmp_path):
    folder = tmp_path / 'run'
    folder.mkdir()
    (folder / 'run.json').write_text('{}')
    with pytest.raises(UsageError) as caught:
        find_run(str(folder), str(tmp_path / 'runs'))
    assert str(caught.value).count(str(folder)) == 1 and 'has no last.pt' in str(caught.value)


def test_flags_a_checkpoint_records_that_this_lvae_lacks_are_named_not_dropped_silently():
    from lvae.training.runs import resume_flags
    defaults = {'model': 'rd_model_base', 'lr': 5e-4, 'iterations': 10}
    saved = {'model': 'rd_model_tiny', 'lr': 2e-3, 'iterations': 4, 'grad_noise': 0.1}
    with pytest.warns(RuntimeWarning, match='this lvae does not have, ignored: --grad_noise'):
        flags, changes = resume_flags(saved, {'iterations': 8}, defaults, fixed=('model',))
    assert flags == {'model': 'rd_model_tiny', 'lr': 2e-3, 'iterations': 8} and changes == {'iterations': [4, 8]}
