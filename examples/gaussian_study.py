"""The bound against the truth: models of three sizes trained on the Gaussian source ``gaussian-64`` (whose R(D)
is known exactly) on a CPU, each evaluated on the source's held-out sample plain and with its posteriors refined,
beside the source's optimal channel (the calibration) and the shipped ``rd_model_small`` (trained on photographs).

    python examples/gaussian_study.py                # trains, evaluates, measures, plots; skips what is already there
    python examples/gaussian_study.py --plot-only    # redraw results/gaussian-64-study.png

The EMA weights of each trained model are kept in ``results/gaussian-64-study/<model>.pt`` (the small two are in the
repository; c24's, 21 MB, is rebuilt bit for bit by training again: the runs are seeded, ``--fixseed``, one loader
worker). Writes ``results/<model>-gaussian-64[-refined].json`` (eval-var-rate.py's results, against the true R(D)),
``results/gaussian-64-study.json`` (each run's settings, training time and validations; the BD-rates plain and
refined; where the rate goes, per decoder stage) and ``results/gaussian-64-study.png``.
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
REFINE_STEPS = 50  # Adam steps of posterior refinement per image and lambda (eval-var-rate.py --refine)
# (label, zoo model, --model_args, updates): the CPU budget of each run (batch 8 of fresh 64x64 draws)
MODELS = [
    ('rd_model_tiny', 'rd_model_tiny', '', 3000),
    ('rd_model_small', 'rd_model_small', '', 3000),
    ('c24', 'rd_model_small', 'enc_dims=[48,96,120,144,144], dec_dims=[144,144,120,96,48], dec_nums=[1,1,2,3,3], '
                              'z_dims=[32,32,32,32,32]', 2000),
]
TRAIN = ['--trainset', SOURCE, '--valset', SOURCE, '--val_images', '20', '--val_steps', '8', '--batch_size', '8',
         '--eval_interval', '250', '--lr', '5e-4', '--lr_warmup', '100', '--ema_decay', '0.999', '--workers', '1',
         '--device', 'cpu', '--fixseed']
# What is evaluated: (label, eval-var-rate.py's model flags); the study's models, the shipped model, the channel
CURVES = [(label, ['--weights', os.path.join(WEIGHTS, f'{label}.pt')]) for label, *_ in MODELS] + [
    ('shipped-rd_model_small', ['--model', 'rd_model_small'])]
OPTIMAL = f'{SOURCE}-optimal'
STAGE_LAMBDAS = (4.0, 64.0, 1024.0)  # where the rate per decoder stage is measured (20 held-out images)


def run(cmd):
    print('+', ' '.join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)


def result_path(label, refined=False):
    return os.path.join(REPO, 'results', f'{label}-{SOURCE}{"-refined" if refined else ""}.json')


def train(label, model, model_args, updates, study):
    """Train a study model (unless its weights are kept), keep its EMA weights, record its run in ``study``."""
    weights = os.path.join(WEIGHTS, f'{label}.pt')
    if os.path.exists(weights):
        return
    folder = os.path.join(REPO, 'runs', 'lvae', f'study-{label}')
    if not os.path.exists(os.path.join(folder, 'last_ema.pt')):
        t0 = time.time()
        run(['train-var-rate.py', '--model', model, '--model_args', model_args, '--iterations', str(updates),
             '--name', f'study-{label}', *TRAIN])
        with open(os.path.join(folder, 'validations.jsonl')) as f:
            study[label] = {'model': model, 'model_args': model_args, 'updates': updates, 'flags': TRAIN,
                            'training_seconds': round(time.time() - t0, 1),
                            'validations': [json.loads(line) for line in f]}
    run(['-m', 'lvae.checkpoint', os.path.join(folder, 'last_ema.pt'), weights])


def evaluate(label, flags, refined):
    if not os.path.exists(result_path(label, refined)):
        run(['eval-var-rate.py', *flags, '--dataset_name', SOURCE, '--name', label + (', refined' if refined else ''),
             '--output', result_path(label, refined), '--device', 'cpu', '--no-progress',
             *(['--refine', str(REFINE_STEPS)] if refined else [])])


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


def rate_by_stage():
    """Where the rate goes: per study model, lambda and decoder stage (1/64 ... 1/4 resolution), the KL in bits per
    pixel of the plain and the refined posteriors, on 20 held-out images (one draw each, refinement as in the
    study), beside the true R(D) at the point's MSE, whole and by frequency band (:func:`truth_by_band`)."""
    import torch
    from lvae.evaluation.bound import noise_from
    from lvae.evaluation.refine import Refinement, posterior_offsets, refine_posteriors
    from lvae.models import load_model
    from lvae.sources import get_source
    source = get_source(SOURCE)
    images = source.held_out()[:20]
    out = {}
    for label, *_ in MODELS:
        model = load_model(weights=os.path.join(WEIGHTS, f'{label}.pt')).model.eval()
        stages = [j for j, n in enumerate(model.config.dec_nums) for _ in range(n)]
        for lmb in STAGE_LAMBDAS:
            lmbs = torch.full((len(images),), lmb)
            gens = [torch.Generator().manual_seed(i) for i in range(len(images))]
            offsets = refine_posteriors(model, images, images, lmbs, Refinement(REFINE_STEPS),
                                        noise_from([torch.Generator().manual_seed(10_000 + i)
                                                    for i in range(len(images))]))
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


def plot(out, study):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import numpy as np

    from lvae.evaluation.results import atomic_path
    from lvae.sources import get_source
    fig = Figure(figsize=(12, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    rd, history = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    lo, hi = [], []
    colours = dict(zip([label for label, _ in CURVES], ['C0', 'C1', 'C2', 'C3']))
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
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format='png')
    print(f'wrote {out}')


def main():
    sys.path.insert(0, REPO)
    from lvae.cli import FlagParser
    p = FlagParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--plot-only', action='store_true', help='only redraw the plot')
    args = p.parse_args()
    from lvae.evaluation.results import save_json
    path = os.path.join(REPO, 'results', f'{SOURCE}-study.json')
    study = {}
    if os.path.exists(path):
        with open(path) as f:
            study = json.load(f)
    runs = study.setdefault('runs', {})
    if not args.plot_only:
        for entry in MODELS:
            train(*entry, runs)
        evaluate(OPTIMAL, ['--model', OPTIMAL], refined=False)
        for label, flags in CURVES:
            for refined in (False, True):
                evaluate(label, flags, refined)
        study.update({'source': SOURCE, 'refine_steps': REFINE_STEPS, 'bd_rate_vs_truth': bd_rates()})
        if 'rate_by_stage' not in study:
            study['rate_by_stage'] = rate_by_stage()
        save_json(path, study)
    plot(os.path.join(REPO, 'results', f'{SOURCE}-study.png'), runs)


if __name__ == '__main__':
    main()
