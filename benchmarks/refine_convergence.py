"""Posterior refinement to convergence: the refined loss against Adam steps, and what ``refine='auto'`` buys.

    python benchmarks/refine_convergence.py                 # the study model on draws of gaussian-64
    python benchmarks/refine_convergence.py --kodak DIR     # also rd_model_small on crops of two Kodak images
    python benchmarks/refine_convergence.py --no-rule ...   # the curves alone; --rule-only adds the rule to --out
    python benchmarks/refine_convergence.py --kodak DIR --kodak-only   # adds the Kodak curves to --out
    python benchmarks/refine_convergence.py --photos DIR --windows-only   # adds the rule's window compared to --out
    python benchmarks/refine_convergence.py --kodak DIR --items-only     # the rule before against each item's own
    python benchmarks/refine_convergence.py --kodak DIR --items-only --grid 16 --whole 0   # at 16 lambdas

Part 1 (curves): for each setting (Adam at a fixed learning rate; the ``auto`` rule), the loss that the bound
measures (a fresh draw with the evaluation's seeds: nats per dimension + lambda x MSE in [-1, 1], mean over the
images) at a low, a middle and a high lambda, every few steps up to ``--steps``. Part 2 (the rule against a fixed
budget): ``evaluate_bound(..., refine='auto')`` against ``refine=1500`` on the same draws: the loss per lambda and the
time. Part 3 (the rule's window): ``auto`` with windows of 10 and 20 steps on data it was not checked on (fresh draws
of the source; crops of two training photographs with rd_model_small). Part 4 (each item's own rule): the rule
before, one count for the lambdas of an image refined together, against each image and lambda stopping by its own
rule (the same settings), and against that rule chained along the lambdas (each from the refined offsets of the
lambdas below; at ``--grid 16`` the chain of ``--refine-chain``, its last window averaged): item-steps and loss on
Kodak crops of five sizes and on whole Kodak images (the shipped rd_model_small, whose sha256 the part records;
lambdas 16, 128, 1024, or ``--grid 16``: the evaluation's 16 lambdas from 4 to 2048). Prints tables; writes
``benchmarks/results/refine_convergence.json`` and ``.png`` (the curves).
"""
import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchlib import KODAK_CROPS, kodak_crops  # noqa: E402
from lvae.evaluation import evaluate_bound, pad_to_multiple  # noqa: E402
from lvae.evaluation.refine import (CHAIN, Convergence, Refinement, noise_from, posterior_offsets,  # noqa: E402
                                   refine_chain, refine_posteriors)
from lvae.evaluation.results import mean_objective, save_json  # noqa: E402
from lvae.models import load_model  # noqa: E402
from lvae.sources import get_source  # noqa: E402

STUDY = os.path.join(REPO, 'results', 'gaussian-64-study', 'rd_model_tiny.pt')
KODAK = 'kodak crops, rd_model_small'
CHECKPOINTS = (0, 5, 10, 25, 50, 100, 150, 200, 300, 400, 500, 750, 1000, 1250, 1500, 2000, 3000)


def measured_loss(model, images, lmb, offsets, seed=0):
    """Per lambda (rows of ``lmb``), the loss of a fresh draw with fixed seeds, mean over the images: (L,)."""
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(images))]
    with torch.inference_mode(), posterior_offsets(model, offsets) if offsets else contextlib.nullcontext():
        x_hat, stats = model.forward_end2end(images, lmb, noise=noise_from(gens))
    rate = model.kl_per_image(stats) / images[0].numel()
    distortion = (x_hat - model.preprocess_target(images)).square().mean(dim=(1, 2, 3))
    return (rate + lmb * distortion).double()


def curve(model, images, lambdas, refinement, steps):
    """The measured loss per lambda at each checkpoint step (while every item refines: until ``steps`` or an item's
    rule stops it), and the steps."""
    n = len(images)
    batch = images.repeat(len(lambdas), 1, 1, 1)
    lmb = torch.tensor(lambdas, dtype=torch.float32).repeat_interleave(n)
    points = {}

    def per_lambda(losses):
        return losses.view(len(lambdas), n).mean(1).tolist()

    points[0] = per_lambda(measured_loss(model, batch, lmb, None))

    def on_step(items):
        step = items[0].steps
        if step in CHECKPOINTS and len(items) == len(batch):
            offsets = [torch.cat([item.offsets[i] for item in items]).detach() for i in range(len(items[0].offsets))]
            points[step] = per_lambda(measured_loss(model, batch, lmb, offsets))

    taken = [0]
    if refinement.auto or refinement.steps:
        gens = [torch.Generator().manual_seed(10_000 + i) for i in range(len(batch))]
        refinement = refinement if refinement.auto else Refinement(steps, refinement.lr)
        offsets, taken = refine_posteriors(model, batch, batch, lmb, refinement, gens, on_step=on_step)
        points[max(taken)] = per_lambda(measured_loss(model, batch, lmb, offsets))
    return {'steps': sorted(points), 'loss': [points[k] for k in sorted(points)], 'taken': max(taken)}


def part_curves(label, model, images, lambdas, settings, steps):
    out = {}
    for name, refinement in settings:
        t0 = time.time()
        out[name] = curve(model, images, lambdas, refinement, steps)
        out[name]['seconds_with_checkpoints'] = time.time() - t0
        final = out[name]['loss'][-1]
        print(f'{label} {name:>10}: {out[name]["taken"]:5d} steps, final loss ' +
              ', '.join(f'{v:.5f}' for v in final) + f' (lambdas {", ".join(f"{v:g}" for v in lambdas)})', flush=True)
    best = np.min([np.min(np.array(c['loss']), axis=0) for c in out.values()], axis=0)
    print(f'\n{label}: steps to within 1% of the lowest loss seen (per lambda)')
    print('| setting | ' + ' | '.join(f'lambda {v:g}' for v in lambdas) + ' |')
    print('|---|' + '---:|' * len(lambdas))
    for name, c in out.items():
        loss = np.array(c['loss'])
        cells = []
        for j in range(len(lambdas)):
            within = [s for s, v in zip(c['steps'], loss[:, j]) if v <= best[j] * 1.01]
            cells.append(str(within[0]) if within else '-')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    return {'lambdas': lambdas, 'images': len(images), 'settings': out, 'lowest': best.tolist()}


def part_rule(model, images, lambdas):
    """evaluate_bound with refine='auto' against refine=1500: loss per lambda and time."""
    rows = {}
    for name, refine in (('auto', 'auto'), ('1500', 1500)):
        res = evaluate_bound(model, images, lambdas=lambdas, device='cpu', progress=False, refine=refine)
        rows[name] = {'loss': mean_objective(res).tolist(), 'seconds': res['seconds'],
                      'steps': [r.get('refine_steps') for r in res['per_image']]}
        print(f'refine={name}: {res["seconds"]:.1f} s, loss ' + ', '.join(f'{v:.5f}' for v in rows[name]['loss']),
              flush=True)
    gap = [a / b - 1 for a, b in zip(rows['auto']['loss'], rows['1500']['loss'])]
    ratio = rows['auto']['seconds'] / rows['1500']['seconds']
    print('\n| lambda | auto loss | 1500-step loss | auto / 1500 - 1 |\n|---:|---:|---:|---:|')
    for lmb, a, b, g in zip(lambdas, rows['auto']['loss'], rows['1500']['loss'], gap):
        print(f'| {lmb:.1f} | {a:.5f} | {b:.5f} | {100 * g:+.2f}% |')
    print(f'\ntime: auto {rows["auto"]["seconds"]:.1f} s, 1500 steps {rows["1500"]["seconds"]:.1f} s '
          f'(ratio {ratio:.3f})')
    return {'lambdas': lambdas, 'images': len(images), **rows, 'relative_gap': gap, 'time_ratio': ratio}


def part_windows(study, source, photos, windows=(10, 20)):
    """``auto`` with each window (the rest of the rule at its defaults), against the default window: loss, time and
    steps on 6 fresh draws of the source (the study model, the 6 default lambdas) and on 256x256 crops of two
    training photographs (rd_model_small, lambdas 16, 128, 1024)."""
    from lvae.data import load_image
    small = load_model('rd_model_small').model.eval()
    crops = torch.stack([load_image(os.path.join(photos, f))[:, :256, :256] for f in ('001.png', '002.png')])
    cases = {'gaussian-64, 6 fresh draws (seed 123), rd_model_tiny (study)':
             (study, source.sample(6, torch.Generator().manual_seed(123)), study.default_lambdas(6)),
             'photos 001 and 002, 256x256 crops, rd_model_small': (small, crops, [16.0, 128.0, 1024.0])}
    out = {}
    for label, (model, images, lambdas) in cases.items():
        rows = {}
        for window in windows:
            refinement = Refinement('auto', rule=Convergence(window=window))
            res = evaluate_bound(model, images, lambdas=lambdas, device='cpu', progress=False, refine=refinement)
            rows[window] = {'loss': mean_objective(res).tolist(), 'seconds': res['seconds'],
                            'steps': sorted({s for r in res['per_image'] for s in r['refine_steps']})}
        base = rows[Convergence.window]['loss']
        for window, row in rows.items():
            row['relative_to_default'] = [a / b - 1 for a, b in zip(row['loss'], base)]
            print(f'{label}, window {window}: {row["seconds"]:.0f} s, steps {row["steps"]}, loss against window '
                  f'{Convergence.window}: ' + ', '.join(f'{100 * g:+.2f}%' for g in row['relative_to_default']),
                  flush=True)
        out[label] = {'lambdas': [float(v) for v in lambdas], 'windows': rows}
    return out


class Together:
    """The rule before per-item stopping, for comparison: one count for the items refined together (the mean over
    them of their losses' relative falls), their rates cut and their refinement stopped together. Called after each
    step (``on_step``), the items' own rules never stopping them (:data:`NEVER`)."""

    def __init__(self, rule):
        self.rule, self.previous, self.sums, self.cut, self.steps = rule, None, None, 0, 0

    def __call__(self, items):
        rule, losses = self.rule, np.array([item.loss for item in items])
        self.steps += 1
        self.sums = losses if self.sums is None else self.sums + losses
        stop = self.steps >= rule.max_steps
        if self.steps % rule.window == 0:
            mean, self.sums = self.sums / rule.window, None
            if self.previous is not None and np.mean((self.previous - mean) / np.abs(mean)) < rule.tol:
                stop = stop or self.cut == rule.cuts
                self.cut += 1
                for group in (g for item in items for g in item.optimiser.param_groups):
                    group['lr'] *= rule.factor
            self.previous = mean
        for item in items:
            item.done = stop


NEVER = Convergence(tol=float('-inf'), max_steps=10 ** 9)   # a per-item rule that leaves the decision to Together
BEFORE = Convergence(lr=0.03, window=20, tol=3e-3, factor=0.3, cuts=2, max_steps=1500)   # the settings it had
WHOLE = ('kodim05.png', 'kodim19.png')
ITEM_LAMBDAS = [16.0, 128.0, 1024.0]


def refined_loss(model, im, lambdas, refinement, index, together=None):
    """One image's lambdas refined together (as the evaluation does on a CPU; ``together``: a :class:`Together` that
    decides for them), or along the lambdas where the rule chains them: the loss of a fresh draw with seeds of its
    own (nats per dimension + lambda x MSE in [-1, 1]) per lambda, and each lambda's steps."""
    im = im.unsqueeze(0)
    padded = pad_to_multiple(im).expand(len(lambdas), -1, -1, -1)
    lmb = torch.tensor(lambdas)
    gens = [torch.Generator().manual_seed(10_000 + 100 * index + j) for j in range(len(lambdas))]
    refine = refine_chain if refinement.auto and refinement.rule.chain else refine_posteriors
    offsets, steps = refine(model, padded, im, lmb, refinement, gens, on_step=together)
    draws = [torch.Generator().manual_seed(100 * index + j) for j in range(len(lambdas))]
    with torch.inference_mode(), posterior_offsets(model, offsets):
        x_hat, stats = model.forward_end2end(padded, lmb, noise=noise_from(draws))
    h, w = im.shape[2:]
    rate = model.kl_per_image(stats) / im[0].numel()
    distortion = (x_hat[:, :, :h, :w] - model.preprocess_target(im)).square().mean(dim=(1, 2, 3))
    return (rate + lmb * distortion).double().tolist(), steps


def part_items(folder, whole, grid):
    """The rule before (:class:`Together`) against each item's own rule (the same settings) and against it chained
    along the lambdas (:attr:`Convergence.chain`): item-steps (image-lambda pairs times their steps), loss and time
    on rd_model_small, on the Kodak crops of :data:`benchlib.KODAK_CROPS` and on ``whole`` whole Kodak images, at
    :data:`ITEM_LAMBDAS` (``grid`` 3) or at the evaluation's grid of ``grid`` lambdas."""
    from lvae.data import load_image
    loaded = load_model('rd_model_small')
    small = loaded.model.eval()
    lambdas = ITEM_LAMBDAS if grid == 3 else small.default_lambdas(grid)
    sets = {'crops': kodak_crops(folder),
            'whole': [load_image(os.path.join(folder, f)) for f in WHOLE[:whole]]}
    rules = {'before (one count per image)': (Refinement('auto', BEFORE.lr, rule=NEVER), True),
             'own rule': (Refinement('auto', rule=Convergence(chain=False)), False),
             'own rule, chained along the lambdas': (Refinement('auto', rule=Convergence(chain=True)), False),
             '--refine-chain (chained, windows of 15, 3 after the last cut, the last averaged)':
                 (Refinement('auto', rule=CHAIN), False)}
    if grid != 3:  # the rule before took the item-steps of the own rule at 3 lambdas: the own rule is the base here
        del rules['before (one count per image)'], rules['own rule, chained along the lambdas']
    out = {'lambdas': lambdas, 'crops': [list(c) for c in KODAK_CROPS], 'whole': list(WHOLE[:whole]),
           'weights_sha256': loaded.sha256,
           'default_rule': asdict(Convergence()), 'rules': {}}
    for label, (refinement, together) in rules.items():
        row = {}
        for kind, images in sets.items():
            if not images:
                continue
            t0 = time.time()
            found = [refined_loss(small, im, lambdas, refinement, k + 100 * (kind == 'whole'),
                                  Together(BEFORE) if together else None) for k, im in enumerate(images)]
            loss, steps = np.array([f[0] for f in found]), np.array([f[1] for f in found])
            row[kind] = {'loss': loss.tolist(), 'mean_loss': loss.mean(0).tolist(), 'steps': steps.tolist(),
                         'item_steps': int(steps.sum()), 'seconds': time.time() - t0}
            print(f'{label}, {kind}: {row[kind]["item_steps"]} item-steps, {row[kind]["seconds"]:.0f} s, mean loss '
                  + ', '.join(f'{v:.5f}' for v in row[kind]['mean_loss']), flush=True)
        out['rules'][label] = row
    base = next(iter(out['rules']))
    before = out['rules'][base]
    print(f'\n{len(lambdas)} lambdas ({lambdas[0]:g} to {lambdas[-1]:g}), against the {base}\n')
    print('| rule | images | item-steps | against the base | mean loss against it: over all, per lambda |')
    print('|---|---|---:|---:|---|')
    for label, row in out['rules'].items():
        for kind, r in row.items():
            b = before[kind]
            r['relative_item_steps'] = r['item_steps'] / b['item_steps']
            r['relative_loss'] = [a / c - 1 for a, c in zip(r['mean_loss'], b['mean_loss'])]
            r['relative_mean_loss'] = float(np.mean(r['loss']) / np.mean(b['loss']) - 1)
            print(f'| {label} | {kind} | {r["item_steps"]} | {r["relative_item_steps"]:.2f}x | '
                  f'{100 * r["relative_mean_loss"]:+.2f}%: ' + ', '.join(f'{100 * g:+.2f}%' for g in r['relative_loss'])
                  + ' |')
    return out


def kodak_curves(folder, settings, steps):
    """The curves of rd_model_small on two 256x256 crops of Kodak images (kodim05, kodim19)."""
    from lvae.data import load_image
    small = load_model('rd_model_small').model.eval()
    crops = torch.stack([load_image(os.path.join(folder, f))[:, 128:384, 256:512]
                         for f in ('kodim05.png', 'kodim19.png')])
    return part_curves('kodak', small, crops, [16.0, 128.0, 1024.0], settings, steps)


def plot(path, parts):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from lvae.evaluation.plotting import save_figure
    fig = Figure(figsize=(5 * len(parts), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    for k, (label, part) in enumerate(parts.items()):
        ax = fig.add_subplot(1, len(parts), k + 1)
        for i, (name, c) in enumerate(part['settings'].items()):
            loss = np.array(c['loss'])
            steps = np.maximum(c['steps'], 1)
            for j, lmb in enumerate(part['lambdas']):
                ax.plot(steps, 100 * (loss[:, j] / loss[0, j] - 1), color=f'C{i}', marker='.',
                        linestyle=('-', '--', ':')[j % 3], label=f'{name}, lambda {lmb:g}')
        ax.axhline(0, color='k', linewidth=0.8)
        ax.set_xscale('log')
        ax.set_xlabel('Adam steps (step 0, the plain posterior, plotted at 1)')
        ax.set_ylabel('measured loss against the plain posterior\'s (%)')
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.4)
        ax.legend(fontsize=6)
    save_figure(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=2000, help='steps of the fixed-rate curves')
    p.add_argument('--images', type=int, default=8, help='held-out draws of the source')
    p.add_argument('--rule-images', type=int, default=16, help='held-out draws for the rule against 1500 steps')
    p.add_argument('--lrs', type=float, nargs='+', default=[0.01, 0.03, 0.1], help='fixed learning rates')
    p.add_argument('--auto-lrs', type=float, nargs='+', default=[0.01, 0.03], help="'auto' from these rates")
    p.add_argument('--no-rule', action='store_true', help='only the curves')
    p.add_argument('--rule-only', action='store_true', help='only the rule against 1500 steps (merged into --out)')
    p.add_argument('--kodak-only', action='store_true', help='only the Kodak curves (merged into --out)')
    p.add_argument('--windows-only', action='store_true', help="only the rule's window compared (merged into --out)")
    p.add_argument('--items-only', action='store_true', help='only the rule before against each item\'s own, on Kodak '
                   'crops and --whole whole images (needs --kodak; merged into --out)')
    p.add_argument('--whole', type=int, default=1, help='whole Kodak images in --items-only (at most 2)')
    p.add_argument('--grid', type=int, default=3, help="--items-only at 3 lambdas (16, 128, 1024) or at the "
                   "evaluation's grid of this many (16: the default of eval-var-rate.py)")
    p.add_argument('--photos', default=None, help='the training photographs folder (for --windows-only)')
    p.add_argument('--plot-only', action='store_true', help='redraw the plot of --out')
    p.add_argument('--kodak', default=None, help='a Kodak folder: also rd_model_small on two 256x256 crops')
    p.add_argument('--out', default=os.path.join(REPO, 'benchmarks', 'results', 'refine_convergence.json'))
    args = p.parse_args()
    if args.plot_only:
        with open(args.out) as f:
            plot(os.path.splitext(args.out)[0] + '.png', json.load(f)['curves'])
        return
    torch.set_grad_enabled(False)
    settings = [(f'lr {lr:g}', Refinement(args.steps, lr)) for lr in args.lrs] + \
        [(f'auto from {lr:g}', Refinement('auto', lr)) for lr in args.auto_lrs]
    if args.kodak_only and not args.kodak:
        p.error('--kodak-only needs --kodak DIR')
    if args.windows_only and not args.photos:
        p.error('--windows-only needs --photos DIR')
    if args.items_only and not args.kodak:
        p.error('--items-only needs --kodak DIR')
    model = load_model(weights=STUDY).model.eval()
    source = get_source('gaussian-64')
    if args.rule_only or args.kodak_only or args.windows_only or args.items_only:
        with open(args.out) as f:
            record = json.load(f)
        if args.items_only:
            record['items' if args.grid == 3 else f'items_{args.grid}'] = part_items(args.kodak, args.whole, args.grid)
        if args.rule_only:
            record['rule_vs_1500'] = part_rule(model, source.held_out()[:args.rule_images], model.default_lambdas(6))
        if args.windows_only:
            record['rule_windows'] = part_windows(model, source, args.photos)
        if args.kodak_only:
            record['curves'][KODAK] = kodak_curves(args.kodak, settings, args.steps)
            plot(os.path.splitext(args.out)[0] + '.png', record['curves'])
        record.setdefault('commands', []).append(' '.join(['python', *sys.argv]))
        save_json(args.out, record)
        return
    parts = {}
    lambdas = [4.0, 90.5, 2048.0]
    parts['gaussian-64, rd_model_tiny (study)'] = part_curves('gaussian-64', model, source.held_out()[:args.images],
                                                             lambdas, settings, args.steps)
    if args.kodak:
        parts[KODAK] = kodak_curves(args.kodak, settings, args.steps)
    rule = None if args.no_rule else part_rule(model, source.held_out()[:args.rule_images], model.default_lambdas(6))
    record = {'curves': parts, 'rule_vs_1500': rule, 'torch': torch.__version__, 'threads': torch.get_num_threads()}
    save_json(args.out, record)
    plot(os.path.splitext(args.out)[0] + '.png', parts)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
