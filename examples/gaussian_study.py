"""The bound against the truth: models trained on the Gaussian source ``gaussian-64`` (whose R(D) is known exactly)
on a CPU, each evaluated on the source's held-out sample plain and with its posteriors refined, beside the source's
optimal channel (the calibration) and the shipped ``rd_model_small`` (trained on photographs).

    python examples/gaussian_study.py                # trains, evaluates, measures, plots; skips what is already there
    python examples/gaussian_study.py --ablations    # also the recipe options at equal budget (3,000 updates each)
    python examples/gaussian_study.py --plot-only    # redraw the plots

Two rounds: the first study (three sizes at the learning rate 5e-4, 2,000-3,000 updates, refined by 50 steps), and
the tightness study (the learning rate 2e-3 that the equal-budget comparisons chose, longer runs of two sizes,
refined to convergence with ``refine='auto'``). The EMA weights of each trained model are kept in
``results/gaussian-64-study/<label>.pt`` (c24's, 21 MB, is rebuilt bit for bit by training again: the runs are
seeded, ``--fixseed``, one loader worker). Writes ``results/<label>-gaussian-64[-refined].json`` (eval-var-rate.py's
results, against the true R(D)), ``results/gaussian-64-study.json`` (each run's settings, training time and
validations; the BD-rates plain and refined; where the rate goes, per decoder stage; the scaling fit) and
``results/gaussian-64-study.png``, ``results/gaussian-64-scaling.png``.
"""
import contextlib
import json
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = 'gaussian-64'
WEIGHTS = os.path.join(REPO, 'results', 'gaussian-64-study')
REFINE_STEPS = 50  # the first study's refinement: Adam steps per image and lambda (eval-var-rate.py --refine)
# (label, zoo model, --model_args, updates, flags beside TRAIN): the CPU budget of each run (batch 8 of fresh draws)
MODELS = [
    ('rd_model_tiny', 'rd_model_tiny', '', 3000, []),
    ('rd_model_small', 'rd_model_small', '', 3000, []),
    ('c24', 'rd_model_small', 'enc_dims=[48,96,120,144,144], dec_dims=[144,144,120,96,48], dec_nums=[1,1,2,3,3], '
                              'z_dims=[32,32,32,32,32]', 2000, []),
]
# The tightness study: the learning rate of the equal-budget comparisons, longer runs, refined to convergence.
TIGHT = [
    ('tiny-lr2e3', 'rd_model_tiny', '', 10000, ['--lr', '2e-3', '--eval_interval', '1000']),
    ('small-lr2e3', 'rd_model_small', '', 4000, ['--lr', '2e-3', '--eval_interval', '1000']),
    ('small-lr2e3-20k', 'rd_model_small', '', 20000, ['--lr', '2e-3', '--eval_interval', '1000']),
    # more budgets, each its own run with its whole schedule: the trend run by run
    ('tiny-lr2e3-6k', 'rd_model_tiny', '', 6000, ['--lr', '2e-3', '--eval_interval', '1000']),
    ('small-lr2e3-1k', 'rd_model_small', '', 1000, ['--lr', '2e-3', '--eval_interval', '250']),
    ('tiny-lr2e3-3k', 'rd_model_tiny', '', 3000, ['--lr', '2e-3', '--eval_interval', '1000']),
]
# Recipe options against the first study's rd_model_tiny run at its budget (3,000 updates, --lr 5e-4): --ablations.
ABLATIONS = [
    ('ab-klwarm', 'rd_model_tiny', '', 3000, ['--kl_warmup', '1000']),
    ('ab-klcoarse', 'rd_model_tiny', '', 3000, ['--kl_warmup', '1000', '--kl_warmup_scope', 'coarse']),
    ('ab-unitgain', 'rd_model_tiny', '', 3000, ['--init', 'unit-gain']),
    ('ab-lr2e3', 'rd_model_tiny', '', 3000, ['--lr', '2e-3']),
    # the options for unused coarse latents against ab-lr2e3, the best recipe so far, for its first third
    ('ab-lr2e3-klbalance', 'rd_model_tiny', '', 3000, ['--lr', '2e-3', '--kl_balance', '1000']),
    ('ab-lr2e3-freebits', 'rd_model_tiny', '', 3000, ['--lr', '2e-3', '--free_bits', '0.05', '--free_bits_until',
                                                      '1000']),
]
TRAIN = ['--trainset', SOURCE, '--valset', SOURCE, '--val_images', '20', '--val_steps', '8', '--batch_size', '8',
         '--eval_interval', '250', '--lr', '5e-4', '--lr_warmup', '100', '--ema_decay', '0.999', '--workers', '1',
         '--device', 'cpu', '--fixseed']  # a later --lr or --eval_interval in a run's flags wins
# What is evaluated: (label, eval-var-rate.py's model flags); the study's models, the shipped model, the channel
CURVES = [(label, ['--weights', os.path.join(WEIGHTS, f'{label}.pt')]) for label, *_ in MODELS + TIGHT] + [
    ('shipped-rd_model_small', ['--model', 'rd_model_small'])]
TIGHT_LABELS = {label for label, *_ in TIGHT}
# Refined to convergence: the tiny model (about 40 minutes on 2 CPU cores at 8 lambdas); the small one would take
# two to three times that, so its curve is the plain one.
PLAIN_ONLY = {'small-lr2e3', 'small-lr2e3-20k', 'tiny-lr2e3-6k', 'small-lr2e3-1k', 'tiny-lr2e3-3k'}
OPTIMAL = f'{SOURCE}-optimal'
STAGE_LAMBDAS = (4.0, 64.0, 1024.0)  # where the rate per decoder stage is measured (20 held-out images)


def run(cmd):
    print('+', ' '.join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)


def refine_of(label):
    """The refinement of a label's refined curve: to convergence for the tightness study, 50 steps for the first."""
    return 'auto' if label in TIGHT_LABELS else str(REFINE_STEPS)


def refine_flags(label):
    """eval-var-rate.py's flags of a label's refined curve: the tightness study's at 8 lambdas (log-spaced over
    lmb_range, as the 16 of the plain curve), which halves the hour that 16 would take on 2 CPU cores."""
    return ['--refine', refine_of(label), *(['--steps', '8'] if label in TIGHT_LABELS else [])]


def result_path(label, refined=False):
    return os.path.join(REPO, 'results', f'{label}-{SOURCE}{"-refined" if refined else ""}.json')


def train(label, model, model_args, updates, flags, study, keep=True):
    """Train a study model (unless its weights are kept), keep its EMA weights (when ``keep``), record its run in
    ``study``."""
    weights = os.path.join(WEIGHTS, f'{label}.pt')
    if os.path.exists(weights) or (not keep and label in study):
        return
    folder = os.path.join(REPO, 'runs', 'lvae', f'study-{label}')
    if not os.path.exists(os.path.join(folder, 'last_ema.pt')):
        t0 = time.time()
        run(['train-var-rate.py', '--model', model, '--model_args', model_args, '--iterations', str(updates),
             '--name', f'study-{label}', *TRAIN, *flags])
        with open(os.path.join(folder, 'validations.jsonl')) as f:
            study[label] = {'model': model, 'model_args': model_args, 'updates': updates, 'flags': TRAIN + flags,
                            'training_seconds': round(time.time() - t0, 1),
                            'validations': [json.loads(line) for line in f]}
    if keep:
        run(['-m', 'lvae.checkpoint', os.path.join(folder, 'last_ema.pt'), weights])


def evaluate(label, flags, refined):
    if not os.path.exists(result_path(label, refined)):
        run(['eval-var-rate.py', *flags, '--dataset_name', SOURCE, '--name', label + (', refined' if refined else ''),
             '--output', result_path(label, refined), '--device', 'cpu', '--no-progress',
             *(refine_flags(label) if refined else [])])


def bd_rates():
    """{label: {'plain' | 'refined': [BD-rate, low, high]}} against the true R(D) (PSNR of mean MSE, cubic)."""
    out = {}
    for label, _ in CURVES + [(OPTIMAL, None)]:
        for kind, refined in (('plain', False), ('refined', True)):
            if os.path.exists(result_path(label, refined)):
                with open(result_path(label, refined)) as f:
                    bd = json.load(f)['bd_rate']['true-rd']['psnr_of_mean_mse']
                out.setdefault(label, {})[kind] = [bd['value'], *bd['interval']]
    return out


def truth_by_band(source, mse):
    """The true R(D) at ``mse`` (bits per pixel) split by spatial frequency into the bands the decoder stages'
    grids can hold on a 64x64 image: ``max(|kx|, |ky|)`` at most 0, 1, 2, 4 and 8 cycles per image, and above 8."""
    import numpy as np
    k = np.abs(np.fft.fftfreq(source.size) * source.size)
    band = np.searchsorted([0, 1, 2, 4, 8], np.maximum(k[:, None], k[None, :]))   # 0 ... 5
    bits = np.maximum(0, 0.5 * np.log2(source.spectra() / source.water_level(mse)))  # per component
    return [float(bits[:, band == j].sum()) / source.size ** 2 for j in range(6)]


def rate_by_stage(labels):
    """Where the rate goes: per study model of ``labels``, lambda and decoder stage (1/64 ... 1/4 resolution), the KL
    in bits per pixel of the plain and the refined posteriors, on 20 held-out images (one draw each, refinement as in
    its curve), beside the true R(D) at the point's MSE, whole and by frequency band (:func:`truth_by_band`)."""
    import torch
    from lvae.evaluation.refine import Refinement, noise_from, posterior_offsets, refine_posteriors
    from lvae.models import load_model
    from lvae.sources import get_source
    source = get_source(SOURCE)
    images = source.held_out()[:20]
    out = {}
    for label in labels:
        model = load_model(weights=os.path.join(WEIGHTS, f'{label}.pt')).model.eval()
        refine = refine_of(label)
        refinement = Refinement(refine if refine == 'auto' else int(refine))
        stages = [j for j, n in enumerate(model.config.dec_nums) for _ in range(n)]
        for lmb in STAGE_LAMBDAS:
            lmbs = torch.full((len(images),), lmb)
            gens = [torch.Generator().manual_seed(i) for i in range(len(images))]
            offsets, _ = refine_posteriors(model, images, images, lmbs, refinement,
                                           [torch.Generator().manual_seed(10_000 + i) for i in range(len(images))])
            row = {}
            for kind, offs in (('plain', None), ('refined', offsets)):
                with torch.inference_mode(), posterior_offsets(model, offs) if offs else contextlib.nullcontext():
                    x_hat, stats = model.forward_end2end(images, lmbs, noise=noise_from(gens))
                bits = [float(s['kl'].sum()) / math.log(2) / len(images) / 64 ** 2 for s in stats]
                mse = float(model.process_output(x_hat).sub(images).square().mean())
                row[kind] = {'bpp_by_stage': [sum(b for b, s in zip(bits, stages) if s == j) for j in range(5)],
                             'mse': mse, 'true_bpp': source.rate_bpp(mse),
                             'true_bpp_by_band': truth_by_band(source, mse)}
            out.setdefault(label, {})[str(lmb)] = row
    return out


def save_png(fig, path):
    """Lay out ``fig`` and write it to ``path`` as a PNG, atomically."""
    from lvae.evaluation.plotting import save_figure
    print(f'wrote {save_figure(fig, path)}')


def plot(out, study):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import numpy as np

    from lvae.sources import get_source
    fig = Figure(figsize=(12, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    rd, history = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    lo, hi = [], []
    colours = dict(zip([label for label, _ in CURVES], [f'C{i}' for i in range(10)]))
    for label, _ in CURVES + [(OPTIMAL, None)]:
        for refined in (False, True):
            path = result_path(label, refined)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                res = json.load(f)
            bd = res['bd_rate']['true-rd']['psnr_of_mean_mse']
            band = f' [{bd["interval"][0]:+.1f}, {bd["interval"][1]:+.1f}]' if bd['interval'] else ''
            style = dict(color='k', marker='x', linestyle='none') if label == OPTIMAL else \
                dict(color=colours[label], marker='.', linestyle='--' if refined else '-')
            rd.plot(res['results']['bpp'], res['results']['psnr_of_mean_mse'],
                    label=f'{res["name"]} ({bd["value"]:+.1f}%{band})', **style)
            lo.append(min(res['results']['psnr_of_mean_mse']))
            hi.append(max(res['results']['psnr_of_mean_mse']))
    for label, entry in study.items():
        pts = [(v['iter'], v['val/bd_rate']) for v in entry.get('validations', []) if v.get('val/bd_rate') is not None]
        if pts:
            history.plot(*zip(*pts), marker='.', label=label, color=colours.get(label))
    if lo:
        src = get_source(SOURCE)
        psnr = np.linspace(max(min(lo) - 1, src.zero_rate_psnr() + 0.05), max(hi) + 1, 60)
        rd.plot(src.rate_at_psnr(psnr), psnr, 'k-', linewidth=0.8, label='true R(D)')
    rd.set_xlabel('bits per pixel')
    rd.set_ylabel('PSNR of the mean MSE (dB)')
    rd.set_title(f'{SOURCE}: bounds plain (solid) and refined (dashed), BD-rate vs the truth', fontsize=9)
    history.set_xlabel('training updates (batch 8)')
    history.set_ylabel('BD-rate vs the true R(D) (%, log scale)')
    history.set_yscale('log')
    history.set_title('excess over the truth during training (20 held-out images, 8 lambdas)', fontsize=9)
    for ax in (rd, history):
        ax.grid(True, alpha=0.4)
        ax.legend(fontsize=7)
    save_png(fig, out)


PAPER_IMAGES = 200_000 * 16  # the paper's budget: 200k updates of batch 16 (an extrapolation's target, not a run)


def scaling(study):
    """BD-rate against the truth versus images seen, per run of the tightness study: the validations (20 held-out
    images, 8 lambdas, plain), a power law fitted to those from 1,000 updates on (log BD-rate linear in log images),
    its extrapolation to the paper's budget, and the full evaluations at the end (100 images, 16 lambdas, plain and
    refined to convergence)."""
    import numpy as np
    out = {}
    bd = study.get('bd_rate_vs_truth', {})
    for label, *_ in TIGHT:
        entry = study['runs'].get(label)
        if not entry:
            continue
        batch = int(entry['flags'][entry['flags'].index('--batch_size') + 1])
        pts = [(v['iter'] * batch, v['val/bd_rate']) for v in entry['validations']
               if v.get('val/bd_rate') is not None and v['iter'] >= 1000]
        images, rate = (np.array(x, dtype=float) for x in zip(*pts))
        fit = None
        if len(pts) >= 3:   # a line through fewer points says nothing
            slope, intercept = np.polyfit(np.log(images), np.log(rate), 1)
            fit = {'slope': float(slope), 'intercept': float(intercept),
                   'bd_rate_at_paper_budget': float(np.exp(intercept + slope * np.log(PAPER_IMAGES))),
                   'note': 'extrapolation: log BD-rate linear in log images seen, fitted from 1,000 updates on'}
        out[label] = {'images': images.tolist(), 'val_bd_rate': rate.tolist(), 'fit': fit,
                      'final': {'images': entry['updates'] * batch, **bd.get(label, {})}}
    return out


def trend(study, draws=4000):
    """The excess run by run: per model, the held-out BD-rate against the truth (plain, 100 images, 16 lambdas) of
    each run at --lr 2e-3 with its own whole schedule, against the images it saw; log BD-rate fitted linear in log
    images, its slope's 95% range from refits with each run's BD-rate drawn within its bootstrap interval (normal
    in log BD-rate), and the slope between the last two runs against the first two (a floor flattens it)."""
    import numpy as np
    rng = np.random.default_rng(0)
    bd, out = study.get('bd_rate_vs_truth', {}), {}
    for model in ('rd_model_tiny', 'rd_model_small'):
        rows = []
        for label, entry in study['runs'].items():
            flags = entry['flags']
            if entry['model'] == model and '--lr' in flags and flags[len(flags) - 1 - flags[::-1].index('--lr') + 1] \
                    == '2e-3' and label in bd and not entry['model_args']:
                batch = int(flags[flags.index('--batch_size') + 1])
                rows.append((entry['updates'] * batch, *bd[label]['plain'], label))
        rows.sort()
        if len(rows) < 3:
            continue
        images = np.log([r[0] for r in rows])
        value, low, high = (np.log([r[k] for r in rows]) for k in (1, 2, 3))
        slope, intercept = np.polyfit(images, value, 1)
        sd = (high - low) / (2 * 1.96)
        slopes = [np.polyfit(images, value + sd * rng.standard_normal(len(rows)), 1)[0] for _ in range(draws)]
        out[model] = {'runs': [r[4] for r in rows], 'images': [r[0] for r in rows],
                      'bd_rate': [[r[1], r[2], r[3]] for r in rows],
                      'slope': float(slope), 'slope_95': [float(v) for v in np.percentile(slopes, [2.5, 97.5])],
                      'slope_first_two': float((value[1] - value[0]) / (images[1] - images[0])),
                      'slope_last_two': float((value[-1] - value[-2]) / (images[-1] - images[-2])),
                      'note': 'log BD-rate linear in log images seen across separate runs; the range covers the '
                              'runs\' intervals over images, not the choice of runs or of the law'}
    return out


def plot_scaling(study, path):
    """The validations of each long run with its fit, and the held-out BD-rate of every run at --lr 2e-3 with the
    fit across runs of each model (:func:`trend`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import numpy as np

    fig = Figure(figsize=(6.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (label, entry) in enumerate((k, v) for k, v in study.get('scaling', {}).items() if v['fit']):
        ax.plot(entry['images'], entry['val_bd_rate'], '.', color=f'C{i}', alpha=0.6, label=f'{label}: validations')
        x = np.geomspace(min(entry['images']), PAPER_IMAGES, 50)
        fit = entry['fit']
        ax.plot(x, np.exp(fit['intercept'] + fit['slope'] * np.log(x)), ':', color=f'C{i}',
                label=f'{label}: validations\' fit, slope {fit["slope"]:.2f} (extrapolated)')
    for j, (model, entry) in enumerate(study.get('trend', {}).items()):
        color = f'C{5 + j}'
        values = np.array(entry['bd_rate'])
        ax.errorbar(entry['images'], values[:, 0], yerr=[values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]],
                    fmt='s', color=color, capsize=3, label=f'{model}: each run, 100 held-out images')
        slope, intercept = np.polyfit(np.log(entry['images']), np.log(values[:, 0]), 1)
        x = np.geomspace(min(entry['images']), PAPER_IMAGES, 50)
        ax.plot(x, np.exp(intercept + slope * np.log(x)), '-', color=color, linewidth=1,
                label=f'{model}: across runs, slope {slope:.2f} [{entry["slope_95"][0]:.2f}, '
                      f'{entry["slope_95"][1]:.2f}] (extrapolated)')
    ax.axvline(PAPER_IMAGES, color='k', linewidth=0.8)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('training images seen')
    ax.set_ylabel('BD-rate vs the true R(D) (%)')
    ax.set_title(f'{SOURCE}: the bound against the truth as training grows (line: the paper\'s budget)', fontsize=8)
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize=6)
    save_png(fig, path)


def main():
    sys.path.insert(0, REPO)
    from lvae.cli import FlagParser
    p = FlagParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--plot-only', action='store_true', help='only redraw the plots')
    p.add_argument('--ablations', action='store_true', help='also train the recipe options at equal budget')
    args = p.parse_args()
    from lvae.evaluation.results import save_json
    path = os.path.join(REPO, 'results', f'{SOURCE}-study.json')
    study = {}
    if os.path.exists(path):
        with open(path) as f:
            study = json.load(f)
    runs = study.setdefault('runs', {})
    if not args.plot_only:
        for entry in MODELS + TIGHT:
            train(*entry, runs)
        for entry in ABLATIONS if args.ablations else []:
            train(*entry, study.setdefault('ablations', {}), keep=False)
        evaluate(OPTIMAL, ['--model', OPTIMAL], refined=False)
        for label, flags in CURVES:
            for refined in (False, True) if label not in PLAIN_ONLY else (False,):
                evaluate(label, flags, refined)
        study.update({'source': SOURCE, 'refine_steps': REFINE_STEPS, 'bd_rate_vs_truth': bd_rates()})
        stages = study.setdefault('rate_by_stage', {})
        stages.update(rate_by_stage([label for label, *_ in MODELS + TIGHT if label not in stages]))
        study['scaling'] = scaling(study)
        study['trend'] = trend(study)
        save_json(path, study)
    plot(os.path.join(REPO, 'results', f'{SOURCE}-study.png'), runs)
    plot_scaling(study, os.path.join(REPO, 'results', f'{SOURCE}-scaling.png'))


if __name__ == '__main__':
    main()
