"""Importing lvae and drawing a plot change nothing global (the matplotlib backend, logger levels and the RNG states
stay, pyplot is not imported); importing lvae and the scripts' ``--help`` load no torch; every import path the
README, the docs and the notebook show works; every ``python -m lvae.*`` command answers ``--help``."""
import importlib
import os
import inspect
import subprocess
import sys

import pytest

CHECK = r'''
import logging, random, sys
import matplotlib, numpy, torch
matplotlib.use('svg')
torch.manual_seed(3); numpy.random.seed(3); random.seed(3)
before = (matplotlib.get_backend(), {n: logging.getLogger(n).level for n in logging.root.manager.loggerDict},
          logging.root.level, torch.get_rng_state(), numpy.random.get_state()[1].copy(), random.getstate())
import lvae, lvae.accel, lvae.bdrate, lvae.anchors, lvae.checkpoint, lvae.data, lvae.datasets, lvae.evaluation
import lvae.evaluation.report, lvae.models, lvae.sources, lvae.training, lvae.training.trainset
import lvae.evaluation.plotting
vtm = lvae.bdrate.get_anchor('kodak')
lvae.evaluation.plotting.plot_rd(sys.argv[1], [('x', vtm['bpp'], vtm['psnr'])])  # a plot leaves the backend too
after = (matplotlib.get_backend(), {n: logging.getLogger(n).level for n in before[1]}, logging.root.level,
         torch.get_rng_state(), numpy.random.get_state()[1], random.getstate())
assert before[0] == after[0], (before[0], after[0])
assert 'matplotlib.pyplot' not in sys.modules  # nothing imports pyplot behind the user's back
assert before[1] == after[1] and before[2] == after[2]
assert torch.equal(before[3], after[3]) and (before[4] == after[4]).all() and before[5] == after[5]
print('unchanged')
'''


def test_importing_lvae_and_plotting_leave_backend_loggers_and_rng_alone(tmp_path):
    out = subprocess.run([sys.executable, '-c', CHECK, str(tmp_path / 'rd.png')], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == 'unchanged', out.stderr[-2000:]
    assert (tmp_path / 'rd.png').read_bytes()[:4] == b'\x89PNG'


# (module, names) that users reach for: in the README, the docs and the quickstart notebook
PUBLIC = [
    ('lvae', ['get_model', 'list_models', 'register_model', 'load_model', 'VariableRateLossyVAE', 'RDConfig', 'accel',
              'bd_rate', 'bd_psnr']),
    ('lvae.evaluation', ['evaluate_bound', 'lambda_grid', 'pad_to_multiple', 'as_test_set', 'TestSet']),
    ('lvae.bdrate', ['bd_rate', 'bd_psnr', 'get_anchor', 'list_anchors', 'read_curve', 'bd_table']),
    ('lvae.accel', ['prepare', 'reference', 'restoring', 'CPUConvNeXtBlock', 'inference_forms']),
    ('lvae.accel.memory', ['reuse_freed_memory']),
    ('lvae.sources', ['get_source', 'list_sources', 'register_source', 'true_curve', 'GaussianField']),
    ('lvae.sources.fit', ['fit_field']),
    ('lvae.training', ['Recipe', 'Trainer']),
    ('lvae.training.trainset', ['SourceSamples', 'endless_batches', 'training_set']),
    ('lvae.models', ['model_from_checkpoint', 'parse_model_args', 'registered_config']),
    ('lvae.checkpoint', ['load_file', 'load_weights', 'save_checkpoint', 'export_weights']),
    ('lvae.data', ['load_image', 'dataset_path', 'list_images', 'ImageFolderCrops']),
    ('lvae.anchors', ['make_codec', 'anchor_curve']),
    ('lvae.datasets', ['download_dataset', 'find_or_download']),
]
COMMANDS = ['lvae.bdrate', 'lvae.anchors', 'lvae.datasets', 'lvae.checkpoint', 'lvae.sources']


@pytest.mark.parametrize('module, names', PUBLIC, ids=[m for m, _ in PUBLIC])
def test_the_public_import_paths_work(module, names):
    """Each name imports from its documented module and is lvae's own function, class, module or object."""
    found = importlib.import_module(module)
    missing = [n for n in names if not hasattr(found, n)]
    assert missing == []
    for name in names:
        value = getattr(found, name)
        home = getattr(value, '__module__', None) or getattr(value, '__name__', '') or type(value).__module__
        assert home.startswith('lvae'), (module, name, home)
        assert callable(value) or inspect.ismodule(value) or hasattr(value, 'chosen'), (module, name)


@pytest.mark.parametrize('command', COMMANDS)
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f'{command}.__main__').main(['--help'])
    assert done.value.code == 0 and f'python -m {command}' in capsys.readouterr().out


HELP = r'''
import runpy, sys
import lvae, lvae.evaluation, lvae.training
assert 'torch' not in sys.modules, 'import lvae loaded torch'
sys.argv = [sys.argv[1], '--help']
try:
    runpy.run_path(sys.argv[0], run_name='__main__')
except SystemExit as e:
    assert e.code == 0, e.code
assert 'torch' not in sys.modules, '--help loaded torch'
'''


@pytest.mark.parametrize('script, flag', [('eval-var-rate.py', '--refine'), ('train-var-rate.py', '--lr_warmup')])
def test_importing_lvae_and_the_scripts_help_load_no_torch(script, flag):
    """--help answers in a fraction of a second: no torch, timm or torchvision behind it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, '-c', HELP, os.path.join(repo, script)], capture_output=True, text=True,
                         timeout=120, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    assert flag in out.stdout and 'usage:' in out.stdout
