"""Importing lvae changes nothing global: the matplotlib backend, logger levels and the RNG states stay."""
import subprocess
import sys

CHECK = r'''
import logging, random
import matplotlib, numpy, torch
matplotlib.use('svg')
torch.manual_seed(3); numpy.random.seed(3); random.seed(3)
before = (matplotlib.get_backend(), {n: logging.getLogger(n).level for n in logging.root.manager.loggerDict},
          logging.root.level, torch.get_rng_state(), numpy.random.get_state()[1].copy(), random.getstate())
import lvae, lvae.accel, lvae.bdrate, lvae.datasets, lvae.evaluation, lvae.intervals, lvae.kernels, lvae.plotting
after = (matplotlib.get_backend(), {n: logging.getLogger(n).level for n in before[1]}, logging.root.level,
         torch.get_rng_state(), numpy.random.get_state()[1], random.getstate())
assert before[0] == after[0], (before[0], after[0])
assert before[1] == after[1] and before[2] == after[2]
assert torch.equal(before[3], after[3]) and (before[4] == after[4]).all() and before[5] == after[5]
print('unchanged')
'''


def test_importing_lvae_leaves_backend_loggers_and_rng_alone():
    out = subprocess.run([sys.executable, '-c', CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == 'unchanged', out.stderr[-2000:]
