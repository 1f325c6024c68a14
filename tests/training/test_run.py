"""A run driven from typed settings, as a notebook would: RunSettings and Recipe instead of the script's flags."""
import json

import pytest

from lvae.cli import UsageError
from lvae.training import Recipe, RunSettings, TrainingRun


def test_a_notebook_drives_a_run_from_typed_settings(tmp_path):
    settings = RunSettings(model='rd_model_tiny', trainset='gaussian-64', valset='gaussian-64', batch_size=2,
                           val_images=2, val_steps=2, workers=0, device='cpu', eval_interval=2, name='nb',
                           runs_root=str(tmp_path), fixseed=True, recipe=Recipe(iterations=3, lr=2e-3))
    run = TrainingRun.start(settings)
    with run:
        run.begin()
        while run.running():
            run.update()
    assert run.status == 0 and run.trainer.iter == 3
    folder = tmp_path / 'lvae' / 'nb'
    assert [json.loads(line)['iter'] for line in (folder / 'validations.jsonl').read_text().splitlines()] == [0, 2, 3]
    flags = json.loads((folder / 'args.json').read_text())
    assert flags['lr'] == 2e-3 and flags['iterations'] == 3 and RunSettings.from_flags(flags) == settings


@pytest.mark.parametrize('bad, words', [({'batch_size': 0}, '--batch_size must be >= 1'),
                                        ({'model': 'rd_nope'}, 'unknown model'),
                                        ({'wbmode': 'loud'}, '--wbmode must be one of')])
def test_settings_are_checked_when_made(bad, words):
    with pytest.raises(UsageError, match=words):
        RunSettings(**bad)
