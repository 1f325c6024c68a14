"""The bound against the truth: models of three sizes trained on the Gaussian source ``gaussian-64`` (whose R(D)
is known exactly) on a CPU, each evaluated on the source's held-out sample, and the excess over the truth against
training updates.

    python examples/gaussian_study.py                # trains, evaluates, plots; skips what is already there
    python examples/gaussian_study.py --plot-only    # redraw results/gaussian-64-study.png

Writes ``results/<model>-gaussian-64.json`` (eval-var-rate.py's results, BD-rate against the true R(D)),
``results/gaussian-64-study.json`` (each run's settings, training time and validations: the BD-rate against the
truth every 250 updates) and ``results/gaussian-64-study.png``; the runs go to ``runs/lvae/study-<model>/``.
"""
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = 'gaussian-64'
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


def run(cmd):
    print('+', ' '.join(cmd), flush=True)
    subprocess.run([sys.executable, *cmd], cwd=REPO, check=True)


def train_and_evaluate(label, model, model_args, updates, study):
    """Train (unless its run has EMA weights), record its settings, time and validations in ``study``, evaluate."""
    folder = os.path.join(REPO, 'runs', 'lvae', f'study-{label}')
    result = os.path.join(REPO, 'results', f'{label}-{SOURCE}.json')
    if not os.path.exists(os.path.join(folder, 'last_ema.pt')):
        t0 = time.time()
        run(['train-var-rate.py', '--model', model, '--model_args', model_args, '--iterations', str(updates),
             '--name', f'study-{label}', *TRAIN])
        with open(os.path.join(folder, 'validations.jsonl')) as f:
            study[label] = {'model': model, 'model_args': model_args, 'updates': updates, 'flags': TRAIN,
                            'training_seconds': round(time.time() - t0, 1),
                            'validations': [json.loads(line) for line in f]}
    if not os.path.exists(result):
        run(['eval-var-rate.py', '--weights', os.path.join(folder, 'last_ema.pt'), '--dataset_name', SOURCE,
             '--name', label, '--output', result, '--device', 'cpu', '--no-progress'])


def plot(out, study):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lvae.evaluation.results import atomic_path
    from lvae.sources import get_source
    import numpy as np
    fig = Figure(figsize=(11, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    rd, history = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    lo, hi = [], []
    for label, *_ in MODELS:
        path = os.path.join(REPO, 'results', f'{label}-{SOURCE}.json')
        if not os.path.exists(path):
            continue
        with open(path) as f:
            res = json.load(f)
        bd = res['bd_rate']['true-rd']['psnr_of_mean_mse']
        band = f' [{bd["interval"][0]:+.1f}, {bd["interval"][1]:+.1f}]' if bd['interval'] else ''
        rd.plot(res['results']['bpp'], res['results']['psnr_of_mean_mse'], marker='.',
                label=f'{label} ({bd["value"]:+.1f}%{band})')
        lo.append(min(res['results']['psnr_of_mean_mse']))
        hi.append(max(res['results']['psnr_of_mean_mse']))
        pts = [(v['iter'], v['val/bd_rate']) for v in study.get(label, {}).get('validations', [])
               if v.get('val/bd_rate') is not None]
        if pts:
            history.plot(*zip(*pts), marker='.', label=label)
    if lo:
        src = get_source(SOURCE)
        psnr = np.linspace(max(min(lo) - 1, src.zero_rate_psnr() + 0.05), max(hi) + 1, 60)
        rd.plot(src.rate_at_psnr(psnr), psnr, 'k--', label='true R(D)')
    rd.set_xlabel('bits per pixel')
    rd.set_ylabel('PSNR of the mean MSE (dB)')
    rd.set_title(f'{SOURCE}: bounds (BD-rate vs the truth) and the true R(D)', fontsize=9)
    history.set_xlabel('training updates (batch 8)')
    history.set_ylabel('BD-rate vs the true R(D) (%, log scale)')
    history.set_yscale('log')
    history.set_title('excess over the truth during training (20 held-out images, 8 lambdas)', fontsize=9)
    for ax in (rd, history):
        ax.grid(True, alpha=0.4)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format='png')
    print(f'wrote {out}')


def main():
    sys.path.insert(0, REPO)
    from lvae.cli import FlagParser
    p = FlagParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--plot-only', '--plot_only', action='store_true', dest='plot_only', help='only redraw the plot')
    args = p.parse_args()
    from lvae.evaluation.results import save_json
    path = os.path.join(REPO, 'results', f'{SOURCE}-study.json')
    study = {}
    if os.path.exists(path):
        with open(path) as f:
            study = json.load(f)
    if not args.plot_only:
        for entry in MODELS:
            train_and_evaluate(*entry, study.setdefault('runs', {}))
        save_json(path, {'source': SOURCE, **study})
    plot(os.path.join(REPO, 'results', f'{SOURCE}-study.png'), study.get('runs', {}))


if __name__ == '__main__':
    main()
