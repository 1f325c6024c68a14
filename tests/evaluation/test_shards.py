"""An evaluation spread over parts (--shard K/N, torchrun ranks): contiguous blocks of the images, each part's own
journal, and a result with the numbers of one process however the work was split."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lvae.evaluation.journal import Journal, JournalError
from lvae.evaluation.outputs import journal_path, journals_beside, output_lock, OutputError
from lvae.evaluation.shards import Part, parse_shard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, 'eval-var-rate.py')
SIZES = ((64, 64), (96, 64), (64, 128), (70, 50), (64, 64))   # width x height; two not multiples of 64


@pytest.mark.parametrize('n, count', [(5, 2), (5, 3), (2, 3), (0, 2), (7, 7), (10, 4)])
def test_parts_are_contiguous_blocks_that_cover_every_image_once(n, count):
    blocks = [Part(k, count).block(n) for k in range(count)]
    assert [i for b in blocks for i in b] == list(range(n))   # in order: no padding, no repeat, none left out
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1   # uneven splits differ by one image at most


def test_a_shard_is_k_of_n_counted_from_one():
    assert parse_shard('2/3') == Part(1, 3) and parse_shard('1/1') == Part(0, 1)
    for bad in ('0/2', '3/2', '2', 'a/b', '1/0', '-1/2'):
        with pytest.raises(ValueError, match='--shard takes K/N'):
            parse_shard(bad)


def test_journals_beside_an_output_are_those_of_every_part_and_no_other_file(tmp_path):
    out = tmp_path / 'r.json'
    for part in (None, Part(0, 2), Part(2, 3)):
        open(journal_path(out, part), 'w').close()
    (tmp_path / '.r.json.journal-x').write_text('')
    (tmp_path / '.r.json.lock-1-of-2').write_text('')
    found = [os.path.basename(p) for p in journals_beside(out)]
    assert found == ['.r.json.journal', '.r.json.journal-1-of-2', '.r.json.journal-3-of-3']


def test_each_part_has_its_own_lock(tmp_path):
    out = tmp_path / 'r.json'
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time\n'
                               'from lvae.evaluation.outputs import output_lock\n'
                               'from lvae.evaluation.shards import Part\n'
                               'with output_lock(sys.argv[1], Part(0, 2)):\n'
                               '    print("held", flush=True); time.sleep(60)\n', str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with output_lock(out, Part(1, 2)), output_lock(out):   # the other part, and the whole, are free
            pass
        with pytest.raises(OutputError, match=f'another evaluation \\(pid {holder.pid}\\) is writing part 1/2 of'):
            with output_lock(out, Part(0, 2)):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_journal_of_other_settings_beside_ours_is_refused_by_name(tmp_path):
    other = tmp_path / 'other'
    Journal(other).start({'seed': 1})
    with pytest.raises(JournalError, match=f'{other} holds the unfinished work of an evaluation of other settings'):
        Journal(tmp_path / 'ours', others=[other]).start({'seed': 0})
    assert Journal(tmp_path / 'ours', discard_other=True, others=[other]).start({'seed': 0}) == 0


@pytest.fixture(scope='module')
def five(tmp_path_factory):
    """Five small images of four sizes."""
    folder = tmp_path_factory.mktemp('five')
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f'im{k}.png')
    return str(folder)


def flags(folder, out, *extra):
    return ['--model', 'rd_model_tiny', '--random-init', '--steps', '2', '--refine', '2', '--dataset_name', folder,
            '--device', 'cpu', '--no-progress', '--output', str(out), *extra]


def figures(path):
    data = json.loads(open(path).read())
    return [(r['file'], r['bpp'], r['mse'], r['refine_steps']) for r in data['per_image']], data


def assert_same_figures(a, b):
    """Per image: the same file and steps per lambda; bpp and MSE within 1e-4 relative (another number of threads
    rounds otherwise)."""
    assert [(f, s) for f, _, _, s in a] == [(f, s) for f, _, _, s in b]
    for (_, bpp_a, mse_a, _), (_, bpp_b, mse_b, _) in zip(a, b):
        np.testing.assert_allclose(bpp_a, bpp_b, rtol=1e-4)
        np.testing.assert_allclose(mse_a, mse_b, rtol=1e-4)


def test_shards_then_the_whole_command_give_the_result_of_one_process(eval_script, five, tmp_path, capsys):
    assert eval_script.main(flags(five, tmp_path / 'one.json')) == 0
    out = tmp_path / 'sharded.json'
    assert eval_script.main(flags(five, out, '--shard', '2/2')) == 0   # the parts in any order
    said = capsys.readouterr().out
    assert f'part 2/2: its 2 images are in {journal_path(out, Part(1, 2))}' in said
    assert 'the journals hold 2 of the 5 images' in said and 'evaluates the 3 left' in said
    assert not out.exists()   # a shard writes no result
    assert eval_script.main(flags(five, out, '--shard', '1/2')) == 0
    assert 'the journals hold 5 of the 5 images' in capsys.readouterr().out
    assert eval_script.main(flags(five, out)) == 0
    one, _ = figures(tmp_path / 'one.json')
    sharded, data = figures(out)
    assert sharded == one
    assert data['parts'] == {'1/2': 3, '2/2': 2}
    assert journals_beside(out) == []   # the journals go once the result is written


def test_the_whole_command_evaluates_what_no_part_holds(eval_script, five, tmp_path, capsys):
    out = tmp_path / 'r.json'
    assert eval_script.main(flags(five, out, '--shard', '1/3')) == 0
    assert 'bound, refined (part 1/3): 2/2 im1.png bpp' in capsys.readouterr().out   # --no-progress: a line an image
    assert eval_script.main(flags(five, out)) == 0
    said = capsys.readouterr().out
    assert 'holds 2 of the 5 images' in said and 'bound, refined: 1/5 im0.png' in said and '(from a journal)' in said
    assert figures(out)[1]['parts'] == {'1/3': 2, 'whole': 3}


def test_shard_is_refused_under_torchrun(eval_script, five, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert eval_script.main(flags(five, tmp_path / 'r.json', '--shard', '1/2')) == 2
    assert 'under torchrun each rank takes its part by itself' in capsys.readouterr().err


def torchrun(*args, env=None):
    return subprocess.Popen([sys.executable, '-m', 'torch.distributed.run', '--standalone', *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})


@pytest.mark.slow  # torchrun starts three Python processes
def test_torchrun_ranks_give_the_result_of_one_process(eval_script, five, tmp_path):
    assert eval_script.main(flags(five, tmp_path / 'one.json')) == 0
    run = torchrun('--nproc_per_node', '3', SCRIPT, *flags(five, tmp_path / 'ranks.json'))
    said = run.communicate(timeout=600)[0]
    assert run.returncode == 0, said
    ranks, data = figures(tmp_path / 'ranks.json')
    assert_same_figures(ranks, figures(tmp_path / 'one.json')[0])
    assert data['processes'] == 3 and data['parts'] == {'1/3': 2, '2/3': 2, '3/3': 1}
    assert said.count('wrote ') == 1 and said.count('BD metrics') <= 1   # rank 0 alone reports
    assert journals_beside(tmp_path / 'ranks.json') == []


@pytest.mark.slow  # torchrun, a worker killed and the group restarted
def test_a_killed_rank_restarts_the_group_which_resumes_from_the_journals(eval_script, five, tmp_path):
    """Rank 1 is killed (SIGKILL) once its first image is journaled: torchrun restarts both ranks, which take what
    the journals hold; the result is that of one process."""
    assert eval_script.main(flags(five, tmp_path / 'one.json', '--refine', '40')) == 0
    out = tmp_path / 'killed.json'
    run = torchrun('--nproc_per_node', '2', '--max-restarts', '1', SCRIPT, *flags(five, out, '--refine', '40'))
    second = journal_path(out, Part(1, 2))
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.exists(second) and len(open(second).readlines()) >= 2):
        time.sleep(0.02)
    pids = subprocess.run(['pgrep', '-f', f'{SCRIPT}.*{out}'], capture_output=True, text=True).stdout.split()
    rank1 = [int(p) for p in pids if b'LOCAL_RANK=1\0' in open(f'/proc/{p}/environ', 'rb').read()]
    assert len(rank1) == 1, pids
    os.kill(rank1[0], signal.SIGKILL)
    said = run.communicate(timeout=600)[0]
    assert run.returncode == 0, said
    assert_same_figures(figures(out)[0], figures(tmp_path / 'one.json')[0])
