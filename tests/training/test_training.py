"""lvae.training: the authors' recipe update by update (the public training vector replayed), the schedule,
the spike rule, the EMA and the skip of non-finite updates, each on its own, and a trainer's checkpoint."""
import contextlib
import copy
import io
import math
import os

import pytest
import torch

import lvae
from lvae.training import Recipe, Trainer
from lvae.training.recipe import LR_PERIOD, SPIKE_WINDOW
from lvae.training.trainer import judge_update


def relative_change_error(final, expected, initial):
    """||final - expected|| / ||expected - initial|| over a state dict (L2, float64)."""
    num = sum(((final[k].double() - expected[k].double()) ** 2).sum() for k in expected)
    den = sum(((expected[k].double() - initial[k].double()) ** 2).sum() for k in expected)
    return math.sqrt(num / den)


@pytest.fixture(scope='module')
def vector(shared_dir):
    return torch.load(os.path.join(shared_dir, 'spec', 'rd_train_conformance.pt'), weights_only=True)


@pytest.mark.parametrize('prepared', [False, True], ids=['reference', 'prepared'])
def test_the_public_training_vector_replays_update_by_update(vector, prepared, capsys):
    """24 updates of the authors' loop (a spike at update 15): loss and gradient norm to 1e-4, lr to 1e-6, the
    same EMA flags, and the change of the weights (model and EMA) to 1e-3 relative."""
    model = lvae.VariableRateLossyVAE.from_config(vector['config'])
    model.load_state_dict(vector['init_state_dict'])
    if prepared:
        lvae.accel.prepare(model, 'cpu')
    trainer = Trainer(model.train(), Recipe(**vector['recipe']))
    outs = []
    for step in vector['steps']:
        torch.manual_seed(step['seed'])
        outs.append({k: v.clone() for k, v in trainer.step(step['images'], step['lmb']).items()})
    expected = vector['expected']
    worst = {k: max(abs(float(out[k]) - x) / abs(x) for out, x in zip(outs, expected[k]))
             for k in ('loss', 'grad_norm', 'lr')}
    worst['model change'] = relative_change_error(model.state_dict(), expected['final_state_dict'],
                                                  vector['init_state_dict'])
    worst['EMA change'] = relative_change_error(trainer.ema.module.state_dict(), expected['final_ema_state_dict'],
                                                vector['init_state_dict'])
    with capsys.disabled():
        print(f'\n  training vector replayed ({"prepared" if prepared else "reference"} model), worst relative '
              f'errors: ' + ', '.join(f'{k} {v:.2e}' for k, v in worst.items()))
    assert [bool(out['ema_updated']) for out in outs] == expected['ema_updated']
    assert [bool(out['spike']) for out in outs] == [not flag for flag in expected['ema_updated']]
    assert worst['loss'] < 1e-4 and worst['grad_norm'] < 1e-4 and worst['lr'] < 1e-6
    assert worst['model change'] < 1e-3 and worst['EMA change'] < 1e-3
    assert trainer.iter == 24 and int(trainer.counters['spikes']) == 1 and int(trainer.counters['bad_steps']) == 0


# ------------------------------------------------------------------------------------------------ the recipe
def test_recipe_defaults_are_the_papers():
    r = Recipe()
    assert (r.lr, r.lr_sched, r.lrf_min, r.lr_warmup, r.grad_clip, r.iterations) == \
        (2e-4, 'const-0.5-cos', 0.01, 0, 2.0, 200_000)
    assert (r.ema, r.ema_decay, r.ema_warmup, r.accum_num, r.amp) == (True, 0.9999, 10_000, 1, 'none')


@pytest.mark.parametrize('field, value, words', [('lr', 0.0, '--lr'), ('iterations', 0, '--iterations'),
                                                 ('lr_sched', 'linear', '--lr_sched'),
                                                 ('lr_sched', 'const-1.5-cos', '--lr_sched'),
                                                 ('ema_decay', 1.0, '--ema_decay'), ('amp', 'fp16', '--amp'),
                                                 ('grad_clip', -1.0, '--grad_clip')])
def test_bad_recipe_values_are_named(field, value, words):
    with pytest.raises(ValueError, match=words):
        Recipe(**{field: value})


def test_the_schedule_of_const_half_cos():
    r = Recipe(iterations=1000)                                          # the cosine starts at b = 500
    assert r.lr_factor(0) == r.lr_factor(500) == 1.0
    assert r.lr_factor(501) == pytest.approx(0.01 + 0.495 * (1 + math.cos(math.pi / 499)))
    assert r.lr_factor(750) == pytest.approx(0.01 + 0.495 * (1 + math.cos(math.pi * 250 / 499)))
    assert r.lr_factor(999) == pytest.approx(0.01)                     # lrf_min at the last iteration
    assert all(r.lr_factor(t) >= r.lr_factor(t + 1) for t in range(999))
    # the cosine starts at round(F * iterations), Python's rounding: round(12.5) = 12, round(13.5) = 14
    assert Recipe(iterations=25).lr_factor(12) == 1.0 > Recipe(iterations=25).lr_factor(13)
    assert Recipe(iterations=27).lr_factor(14) == 1.0 > Recipe(iterations=27).lr_factor(15)


def test_the_lr_is_held_for_ten_updates():
    r = Recipe(iterations=1000)
    for t in (0, 5, 9, 500, 507, 990, 999):
        assert r.held_lr(t) == 2e-4 * r.lr_factor(t - t % LR_PERIOD)
    assert r.held_lr(519) == r.held_lr(510) > r.held_lr(520)


def test_warmup_and_the_other_schedules():
    r = Recipe(iterations=100, lr_warmup=10, lr_sched='cos')
    assert [r.lr_factor(t) for t in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert r.lr_factor(10) == 1.0 and r.lr_factor(99) == pytest.approx(0.01)     # cosine from the warm-up's end
    assert r.lr_factor(10 + 89 / 2) == pytest.approx(0.505)
    assert Recipe(lr_sched='cosine').lr_factor(0) == 1.0
    for name in ('const', 'constant'):
        assert Recipe(iterations=100, lr_sched=name, lrf_min=0.5).lr_factor(99) == 1.0
    assert Recipe(iterations=100, lr_sched='const-0.2-cos').lr_factor(20) == 1.0 > \
        Recipe(iterations=100, lr_sched='const-0.2-cos').lr_factor(21)


def test_the_ema_decay_warms_up_exponentially():
    r = Recipe()
    assert r.ema_decay_at(0) == 0.0
    assert r.ema_decay_at(1_000) == pytest.approx(0.9999 * (1 - math.exp(-0.1)))       # 0.095
    assert r.ema_decay_at(10_000) == pytest.approx(0.9999 * (1 - math.exp(-1)))        # 0.632
    assert r.ema_decay_at(200_000) == pytest.approx(0.9999, abs=1e-8)
    auto = Recipe(iterations=2000, ema_warmup=0)                                         # iterations // 20
    assert auto.ema_decay_at(100) == pytest.approx(0.9999 * (1 - math.exp(-1)))


def test_the_spike_rule():
    norms = torch.full((SPIKE_WINDOW,), math.nan)

    def judge(loss, norm, buffer):
        non_finite, spike, buffer = judge_update(torch.tensor(loss), torch.tensor(norm), buffer)
        return bool(non_finite), bool(spike), buffer

    assert judge(1.0, 5.0, norms)[:2] == (False, False)              # the first norm is its own median
    _, _, one = judge(1.0, 1.0, norms)
    assert judge(1.0, 10.5, one)[:2] == (False, True)                # median of [1, 10.5] (the lower): 1
    ones = torch.ones(SPIKE_WINDOW)
    assert judge(1.0, 10.0, ones)[:2] == (False, False)              # not above 10x
    non_finite, spike, after = judge(1.0, 10.01, ones)
    assert (non_finite, spike) == (False, True)
    assert float(after[-1]) == pytest.approx(10.01) and torch.equal(after[:-1], ones[1:])   # spikes are recorded
    for loss, norm in ((math.nan, 1.0), (1.0, math.inf), (math.inf, 1e9)):
        non_finite, spike, after = judge(loss, norm, ones)
        assert (non_finite, spike) == (True, False) and torch.equal(after, ones)          # never recorded
    halves = torch.cat([torch.ones(SPIKE_WINDOW // 2), torch.full((SPIKE_WINDOW // 2,), 3.0)])
    assert not judge(1.0, 29.0, halves)[1] and judge(1.0, 31.0, halves)[1]   # 49 ones and 51 above: median 3
    mixed = torch.cat([torch.ones(SPIKE_WINDOW // 2 + 1), torch.full((SPIKE_WINDOW // 2 - 1,), 3.0)])
    assert judge(1.0, 10.5, mixed)[1]                    # 50 ones, 49 threes and 10.5: the lower median, 1


# ------------------------------------------------------------------------------------------------ the trainer
class Linear(torch.nn.Module):
    """A stand-in for the model: loss = gain * <w, mean colour of the batch> (a constant gradient), with bpp and
    PSNR as tensors (what a step free of host-device synchronisation needs)."""

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


def snapshot(trainer):
    return (trainer.model.w.detach().clone(), trainer.ema.module.w.detach().clone(),
            float(trainer.optimizer.state[trainer.model.w].get('step', 0)) if trainer.optimizer.state else 0.0)


def same(a, b):
    return all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize('device', ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device'))])
def test_updates_are_judged_on_the_device(monkeypatch, device):
    """Two micro-batches per update; a non-finite update leaves weights, Adam and EMA untouched; a spike is taken at
    a tenth of the LR without moving the EMA, and the LR returns at the next multiple of ten; nothing is read on
    the host."""
    device = torch.device(device)
    trainer = Trainer(Linear().to(device), Recipe(lr=0.01, lr_sched='const', iterations=100, grad_clip=0.0,
                                                  ema_warmup=5))
    im = torch.rand(2, 3, 8, 8, device=device)

    def step(images, gain=1.0):
        trainer.model.gain = gain
        with no_host_reads(monkeypatch, device):
            out = trainer.step([images, images])
        return {k: v.clone() for k, v in out.items()}

    for _ in range(3):
        before = snapshot(trainer)
        out = step(im)
        after = snapshot(trainer)
        assert not torch.equal(after[0], before[0]) and after[2] == before[2] + 1 and bool(out['ema_updated'])
    assert float(out['bppix']) == pytest.approx(2 * float(out['loss']))

    before = snapshot(trainer)
    out = step(torch.full_like(im, math.nan))                              # non-finite loss and gradient
    assert same(snapshot(trainer), before) and bool(out['non_finite']) and not bool(out['ema_updated'])
    assert float(out['lr']) == pytest.approx(0.01)

    before = snapshot(trainer)
    out = step(im, gain=100.0)                                              # a gradient spike, at iteration 4
    after = snapshot(trainer)
    assert bool(out['spike']) and not bool(out['ema_updated'])
    assert not torch.equal(after[0], before[0]) and torch.equal(after[1], before[1]) and after[2] == before[2] + 1
    assert float(out['lr']) == pytest.approx(0.001)
    for it in range(5, 10):                                                  # held until iteration 10 ...
        out = step(im)
        assert float(out['lr']) == pytest.approx(0.001) and bool(out['ema_updated'])
    assert float(step(im)['lr']) == pytest.approx(0.01)                     # ... then the schedule again
    counters = {k: int(v) for k, v in trainer.counters.items()}
    assert counters == {'bad_steps': 1, 'spikes': 1, 'bad_in_row': 0, 'longest_bad_run': 1}
    assert trainer.iter == 11


def test_a_trainer_continues_from_its_state_dict_as_if_never_stopped():
    torch.manual_seed(0)
    recipe = Recipe(lr=0.05, iterations=40, lr_sched='const-0.5-cos', ema_warmup=3)
    batches = [torch.rand(2, 3, 8, 8) for _ in range(30)]
    gains = [100.0 if i == 7 else 1.0 for i in range(30)]                  # a spike at 7: its cut is held

    def run(trainer, start, stop):
        for i in range(start, stop):
            trainer.model.gain = gains[i] * (1 + i % 3)
            trainer.step(batches[i])

    straight = Trainer(Linear(), recipe)
    run(straight, 0, 30)
    first = Trainer(Linear(), recipe)
    run(first, 0, 8)
    state = first.state_dict()
    assert state['iter'] == 8 and state['counters']['spikes'] == 1 and state['lr'] == pytest.approx(0.005)
    model = Linear()
    model.load_state_dict(first.model.state_dict())
    resumed = Trainer(model, recipe)
    resumed.load_state_dict(torch.load(_roundtrip(state), weights_only=True))
    assert resumed.lr == pytest.approx(0.005)
    run(resumed, 8, 30)
    assert torch.allclose(resumed.model.w, straight.model.w, rtol=1e-6, atol=1e-7)
    assert torch.allclose(resumed.ema.module.w, straight.ema.module.w, rtol=1e-6, atol=1e-7)
    assert resumed.state_dict()['grad_norms'] == pytest.approx(straight.state_dict()['grad_norms'])


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_the_model_draws_the_lambdas_when_none_are_given():
    """``step(images)`` draws nothing random before the forward: a caller's seed pins the model's lambdas and
    noise, so two identical models under one seed make identical updates."""
    torch.manual_seed(0)
    a = lvae.get_model('rd_model_tiny')
    b = copy.deepcopy(a)
    im = torch.rand(2, 3, 64, 64)
    losses = []
    for model in (a, b):
        trainer = Trainer(model.train(), Recipe(iterations=10), ema=False)
        torch.manual_seed(5)
        losses.append(float(trainer.step(im)['loss']))
        assert trainer.ema is None
    assert losses[0] == losses[1]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    torch.manual_seed(5)
    assert float(a.eval()(im)['loss']) != losses[0]    # the update changed the weights


def test_a_step_that_raises_leaves_the_trainer_as_it_found_it():
    """A micro-batch that raises (an image holding NaN) after an earlier one has back-propagated: no gradient of
    that update reaches the next, whose gradient norm is then a fresh trainer's; counters and iteration unchanged."""
    torch.manual_seed(0)
    model = lvae.get_model('rd_model_tiny').train()
    fresh = copy.deepcopy(model)
    good, bad = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    bad[0, 0, 0, 0] = float('nan')
    lmb = torch.tensor([64.0, 256.0])
    trainer = Trainer(model, Recipe(iterations=10, grad_clip=0), ema=False)
    with pytest.raises(ValueError, match=r'image values must be in \[0, 1\]'):
        trainer.step([good, bad], lmb=[lmb, lmb])
    assert trainer.iter == 0 and all(int(v) == 0 for v in trainer.counters.values())
    assert all(p.grad is None for p in model.parameters())
    norms = []
    for t in (trainer, Trainer(fresh, Recipe(iterations=10, grad_clip=0), ema=False)):
        torch.manual_seed(3)
        norms.append(float(t.step(good, lmb=lmb)['grad_norm']))
    assert norms[0] == norms[1]


@pytest.mark.parametrize('images, words', [
    (torch.rand(0, 3, 64, 64), 'an empty batch'),
    (torch.rand(2, 3, 64, 64, dtype=torch.float64), r'must be torch.float32 like the model, got torch.float64'),
    (torch.rand(3, 64, 64), r'must be \(B, 3, H, W\) tensors'),
])
def test_batches_the_model_cannot_take_are_named(images, words):
    trainer = Trainer(lvae.get_model('rd_model_tiny').train(), Recipe(iterations=10), ema=False)
    with pytest.raises(ValueError, match=words):
        trainer.step(images)
    assert trainer.iter == 0


def test_a_runs_folder_of_another_user_names_its_owner_and_the_way_out(tmp_path, monkeypatch):
    from lvae.training.runs import RunClaim, UsageError
    monkeypatch.setattr(os, 'access', lambda path, mode: False)
    monkeypatch.setattr(os, 'makedirs', lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, 'Permission denied')))
    with pytest.raises(UsageError, match=r'Permission denied \(.* belongs to .*\); put your runs elsewhere with '
                                         r'--runs_root DIR, or in another project folder with --wbproject NAME'):
        RunClaim.new(str(tmp_path / 'shared' / 'lvae'), 'mine', 'rd_model_tiny', {})
