"""An evaluation spread over processes and jobs against one process: the same figures, and the time it takes.

    python benchmarks/spread_eval.py --kodak ../shared/datasets/kodak

Writes the five Kodak crops of ``benchlib.KODAK_CROPS`` (four sizes, one not square) to a folder and evaluates them
with ``--model rd_model_small --pretrained --steps 3 --refine auto`` (CPU): in one process (two threads); under
``torchrun --nproc_per_node 2`` and ``3`` (one thread per rank); in one process with ``--lmb-batch 1``; as
``--shard 1/2`` and ``--shard 2/2`` followed by the same command without ``--shard``; and under ``torchrun
--max-restarts 1 --nproc_per_node 2`` with rank 1 killed (SIGKILL) once its first image is journaled. Prints, per
run, its exit status, the largest relative difference of the per-image bpp and MSE from the one-process result,
whether every image's steps per lambda are the same, and its wall time; then two ranks of one thread against one
process of two threads. Writes ``benchmarks/results/spread_eval.json``.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from benchlib import REPO, kodak_crops
from lvae.evaluation.outputs import journal_path
from lvae.evaluation.results import save_json
from lvae.evaluation.shards import Part

SCRIPT = os.path.join(REPO, 'eval-var-rate.py')
FLAGS = ['--model', 'rd_model_small', '--pretrained', '--steps', '3', '--refine', 'auto', '--device', 'cpu',
         '--no-progress']


def run(command, threads, kill_rank1_of=None):
    """Run ``command`` with ``threads`` threads a process; with ``kill_rank1_of`` (an output), SIGKILL its rank 1
    once that rank's first image is journaled. Returns (exit status, seconds, output)."""
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    t0 = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    if kill_rank1_of:
        journal = journal_path(kill_rank1_of, Part(1, 2))
        while proc.poll() is None and not (os.path.exists(journal) and len(open(journal).readlines()) >= 2):
            time.sleep(0.05)
        pids = subprocess.run(['pgrep', '-f', f'{SCRIPT}.*{kill_rank1_of}'], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            if b'LOCAL_RANK=1\0' in open(f'/proc/{pid}/environ', 'rb').read():
                os.kill(int(pid), signal.SIGKILL)
                print(f'  killed rank 1 (pid {pid})', flush=True)
    output = proc.communicate()[0]
    return proc.returncode, time.time() - t0, output


def compare(path, reference):
    """The largest relative difference of per-image bpp and MSE, and whether every image's steps agree."""
    with open(path) as f:
        got = json.load(f)['per_image']
    with open(reference) as f:
        ref = json.load(f)['per_image']
    worst = max(float(np.max(np.abs(np.array(a[key]) / np.array(b[key]) - 1)))
                for a, b in zip(got, ref) for key in ('bpp', 'mse'))
    same_steps = [a['file'] for a in got] == [b['file'] for b in ref] and all(
        a['refine_steps'] == b['refine_steps'] for a, b in zip(got, ref))
    return worst, same_steps


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--kodak', required=True, help='the Kodak folder')
    p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'spread_eval.json'))
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix='spread-eval-')
    images = os.path.join(work, 'crops')
    os.makedirs(images)
    for k, crop in enumerate(kodak_crops(args.kodak)):
        Image.fromarray((crop.permute(1, 2, 0) * 255).round().byte().numpy()).save(os.path.join(images, f'{k}.png'))
    python, torchrun = [sys.executable], [sys.executable, '-m', 'torch.distributed.run', '--standalone']

    def command(launcher, name, *extra):
        return [*launcher, SCRIPT, *FLAGS, '--dataset_name', images, '--output', os.path.join(work, name), *extra]

    runs = [('one process, 2 threads', 2, [command(python, 'one.json')], None),
            ('torchrun, 2 ranks', 1, [command(torchrun + ['--nproc_per_node', '2'], 'ranks2.json')], None),
            ('torchrun, 3 ranks', 1, [command(torchrun + ['--nproc_per_node', '3'], 'ranks3.json')], None),
            ('one process, --lmb-batch 1', 2, [command(python, 'lmb1.json', '--lmb-batch', '1')], None),
            ('--shard 1/2, 2/2, then the whole', 2, [command(python, 'shards.json', '--shard', '1/2'),
                                                     command(python, 'shards.json', '--shard', '2/2'),
                                                     command(python, 'shards.json')], None),
            ('torchrun 2 ranks, rank 1 killed, --max-restarts 1', 1,
             [command(torchrun + ['--nproc_per_node', '2', '--max-restarts', '1'], 'killed.json')], 'killed.json')]
    rows = []
    for label, threads, commands, killed in runs:
        print(f'{label} ...', flush=True)
        status, seconds = 0, 0.0
        for c in commands:
            rc, s, output = run(c, threads, os.path.join(work, killed) if killed else None)
            status, seconds = status or rc, seconds + s
            if rc:
                print(output[-3000:])
        out = os.path.join(work, os.path.basename(commands[-1][commands[-1].index('--output') + 1]))
        worst, same = compare(out, os.path.join(work, 'one.json')) if status == 0 else (None, None)
        rows.append({'run': label, 'status': status, 'seconds': seconds, 'max_relative_difference': worst,
                     'same_steps': same})
    with open(os.path.join(work, 'one.json')) as f:
        steps = [r['refine_steps'] for r in json.load(f)['per_image']]
    print('\n| run | exit | bpp, MSE: largest relative difference | steps the same | seconds |')
    print('|---|---:|---:|---|---:|')
    for r in rows:
        diff = 'n/a' if r['max_relative_difference'] is None else f'{r["max_relative_difference"]:.1e}'
        print(f'| {r["run"]} | {r["status"]} | {diff} | {r["same_steps"]} | {r["seconds"]:.0f} |')
    ratio = rows[1]['seconds'] / rows[0]['seconds']
    print(f'\ntwo ranks of one thread / one process of two threads: {ratio:.2f}x the time')
    print(f'steps per image and lambda (one process): {steps}')
    save_json(args.out, {'runs': rows, 'time_ratio_two_ranks': ratio, 'steps': steps, 'flags': FLAGS,
                         'torch': torch.__version__, 'cpu_threads': os.cpu_count(),
                         'command': ' '.join(['python', *sys.argv])})
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
