"""What an evaluation tells: BD tables against references (with bootstrap intervals), the per-lambda table, the
results JSON and the R-D plot. ``eval-var-rate.py`` and ``python -m lvae.bdrate`` print through the same functions.
"""
import math
import os
import sys

import numpy as np
import torch

from lvae.evaluation.anchors import TRUE_RD, get_anchor, resolve_anchor_curve
from lvae.evaluation.bdrate import MIN_POINTS, METHODS, bd_psnr, bd_rate, overlap
from lvae.evaluation.journal import WHOLE
from lvae.evaluation.intervals import bd_rates, bootstrap, describe, draw_bd_rates
from lvae.evaluation.outputs import write_pair
from lvae.evaluation.plotting import plot_rd
from lvae.evaluation.results import CONVENTIONS, convention_psnr, json_text, per_image_figures
from lvae.sources import excess_table

# Published curves drawn for comparison where the test set has them (shipped in anchors.json).
PUBLISHED = {'yang-mandt-2022': 'previous bound (Yang & Mandt 2022)', 'qarv_base': 'QARV-base (published)',
             'qres34m': 'QRes-VAE 34M (published)'}
PREVIOUS_BOUND = 'yang-mandt-2022'  # a second BD table, against the previous bound, where it has a curve


def bd_table(test, anchor, name='test', anchor_name='anchor', dataset='', interval=None, interval_note='',
             draws=None):
    """A markdown table of BD-rate and BD-PSNR of curve ``test`` w.r.t. curve ``anchor`` (dicts with ``bpp``,
    ``psnr`` and optionally ``psnr_of_mean_mse``): both PSNR conventions, both interpolation methods.

    interval: ``{convention: [low, high]}`` shown beside the cubic BD-rates, described by ``interval_note``;
    draws: ``{convention: [BD-rate of each posterior draw]}``, listed below the table.
    """
    where = f' on {dataset}' if dataset else ''
    lines = [f'BD metrics of {name} w.r.t. {anchor_name}{where} '
             f'(PSNR overlap {overlap(anchor["psnr"], test["psnr"]):.0%}):', '',
             '| PSNR | method | BD-rate (%) | BD-PSNR (dB) |', '|---|---|---:|---:|']
    enough = len(test['bpp']) >= MIN_POINTS
    notes, mixed, fits = [], False, []
    for conv, conv_label in CONVENTIONS.items():
        test_psnr = convention_psnr(test, conv)
        if test_psnr is None:
            continue
        anchor_psnr = convention_psnr(anchor, conv)
        if anchor_psnr is None:
            anchor_psnr, mixed = anchor['psnr'], True
            conv_label += ' *'
        rates = {}
        for method in METHODS:
            rate = rates[method] = bd_rate(anchor['bpp'], anchor_psnr, test['bpp'], test_psnr, method) if enough \
                else np.nan
            psnr = bd_psnr(anchor['bpp'], anchor_psnr, test['bpp'], test_psnr, method) if enough else np.nan
            cell = _fmt(rate, '+.2f')
            band = (interval or {}).get(conv) if method == 'cubic' else None
            if band is not None and np.isfinite(rate):
                cell += f' [{band[0]:+.2f}, {band[1]:+.2f}]'
            lines.append(f'| {conv_label} | {"cubic (paper)" if method == "cubic" else method} | {cell} | '
                         f'{_fmt(psnr, "+.3f")} |')
        band = (interval or {}).get(conv)
        gap = abs(rates['cubic'] - rates['pchip'])
        if band is not None and np.isfinite(gap) and gap > band[1] - band[0]:
            fits.append(f'{CONVENTIONS[conv]}: {gap:.2f} points')
    if not enough:
        notes.append(f'n/a: BD-rate needs at least {MIN_POINTS} points on the test curve, got {len(test["bpp"])} '
                     f'(evaluate at {MIN_POINTS} or more lambdas, e.g. --steps 16)')
    elif overlap(anchor['psnr'], test['psnr']) == 0:
        notes.append('n/a: the curves share no PSNR range, so BD-rate is undefined (an untrained model?)')
    if interval_note and any(band is not None for band in (interval or {}).values()):
        notes.append(f'[low, high]: {interval_note}')
    if fits:
        notes.append(f'warning: the cubic and pchip fits differ by more than the interval is wide ({"; ".join(fits)}): '
                     f'the BD-rate is no more certain than the fit between too few or uneven points')
    if mixed:
        notes.append(f'*: {anchor_name} is published as mean of per-image PSNR only; that curve is the anchor '
                     f'in this row too')
    for conv, values in (draws or {}).items():
        if np.isfinite(values).all():
            notes.append(f'posterior draws, images fixed ({CONVENTIONS[conv]}, cubic): '
                         + ', '.join(f'{v:+.2f}' for v in values) + f' (std {np.std(values, ddof=1):.2f})')
    return '\n'.join(lines + ([''] + notes if notes else []))


def _fmt(value, spec):
    return format(value, spec) if np.isfinite(value) else 'n/a'


def references(anchor, test_set, test_psnr):
    """{key: (label, curve)} of the BD-rate references with a curve for ``test_set`` (a name): ``anchor`` (on a
    source, :data:`TRUE_RD`: its true R(D) over ``test_psnr``), then the previous bound. A file anchor is keyed
    by its file name."""
    refs = {}
    for name in dict.fromkeys([anchor, PREVIOUS_BOUND]):
        found = resolve_anchor_curve(name, test_set, missing_ok=True, test_psnr=test_psnr)
        if found is not None:
            refs[os.path.basename(name)] = found
    return refs


def comparison(curve, refs, intervals=None, images=None, name='test', dataset='', draws=None):
    """The report of ``curve`` against each reference of ``refs`` ({key: (label, curve)}): one :func:`bd_table`
    each, with the bootstrap interval of ``intervals`` (:func:`lvae.evaluation.intervals.bootstrap` over
    ``images`` images) and each posterior draw's BD-rate (``draws``: ``{key: {convention: [...]}}``), then, against
    a source's true R(D), each point's excess over the truth."""
    parts = []
    for key, (label, ref) in refs.items():
        parts.append(bd_table(curve, ref, name=name, anchor_name=label, dataset=dataset,
                              interval=intervals['bd_rate'].get(key) if intervals else None,
                              interval_note=describe(intervals, images) if intervals else '',
                              draws=(draws or {}).get(key)))
        if key == TRUE_RD:
            parts.append(excess_table(dataset, curve, (intervals or {}).get('excess')))
    if intervals is None:
        parts.append('no interval: the file has no per-image figures')
    return '\n\n'.join(parts)


def bd_summary(result, refs, intervals):
    """Per reference and PSNR convention: the cubic BD-rate (None where undefined), its interval, the anchor's
    PSNR convention used (its published one where it has none other) and, for K > 1, each draw's BD-rate."""
    summary = {}
    for key, (label, curve) in refs.items():
        draws = draw_bd_rates(result['draws'], curve) if result['draws'] else None
        summary[key] = {'label': label, 'method': 'cubic'}
        for conv in CONVENTIONS:
            value = float(bd_rates([result['bpp']], [result[conv]], curve, conv)[0])
            summary[key][conv] = {'value': value if math.isfinite(value) else None,
                                  'interval': intervals['bd_rate'][key][conv],
                                  'anchor_psnr': conv if convention_psnr(curve, conv) is not None else 'psnr',
                                  'draws': draws[conv] if draws else None}
    return summary


def point_table(result, intervals):
    """The per-lambda table: bpp and both PSNR conventions, each with its interval."""
    lines = ['| lambda | bpp | PSNR (dB), mean of per-image PSNR (paper) | PSNR (dB) of mean MSE |',
             '|---:|---:|---:|---:|']
    for j, lmb in enumerate(result['lambdas']):
        cells = [f'{result[key][j]:{spec}} [{intervals[key][j][0]:{spec}}, {intervals[key][j][1]:{spec}}]'
                 for key, spec in (('bpp', '.4f'), ('psnr', '.3f'), ('psnr_of_mean_mse', '.3f'))]
        mark = ' *' if result['outside_lmb_range'][j] else ''
        lines.append(f'| {lmb:.1f}{mark} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'[low, high]: {describe(intervals, result["num_images"])}']
    if any(result['outside_lmb_range']):
        lines.append(f'*: outside the trained lmb_range {result["lmb_range"]} (extrapolated)')
    return '\n'.join(lines)


def result_references(result, test, anchor=None):
    """``(anchor, refs)``: the BD-rate reference of ``result`` on ``test`` (default: the test set's) and
    :func:`references` over the result's PSNR range."""
    anchor = anchor or test.default_anchor
    return anchor, references(anchor, test.name, result['psnr'] + result['psnr_of_mean_mse'])


def report(result, test, anchor=None, name='test'):
    """Everything an evaluation ``result`` (:func:`lvae.evaluation.evaluate_bound`) on :class:`TestSet` ``test``
    tells: ``(text, record)``, the printed report and the results JSON's comparison fields (``intervals``,
    ``bd_rate``). ``anchor``: the BD-rate reference (default: the test set's)."""
    anchor, refs = result_references(result, test, anchor)
    intervals = bootstrap(*per_image_figures(result), anchors={key: curve for key, (_, curve) in refs.items()},
                          truth=test.source.rate_bpp if test.source is not None else None)
    bd = bd_summary(result, refs, intervals)
    draws = {key: {conv: bd[key][conv]['draws'] for conv in CONVENTIONS} for key in refs} if result['draws'] else None
    text = point_table(result, intervals) + '\n\n' + comparison(result, refs, intervals, result['num_images'], name,
                                                                   test.name, draws)
    if os.path.basename(anchor) not in refs:
        hint = (f'make one with `python -m lvae.anchors {test.folder} --codec jpeg` and pass it with --anchor'
                if test.folder else 'pass one with --anchor')
        text += f'\n\nno {anchor} anchor for {test.name!r}: {hint}'
    if test.partial:
        text += f'\n\nwarning: {partial_note(test)}'
    return text, {'intervals': intervals, 'bd_rate': bd}


def partial_note(test):
    """What a result on a known test set with missing images must say."""
    found, expected = test.partial
    return (f'{test.name} here has {found} of its {expected} images: the figures are those of these {found}, not '
            f'comparable with published {test.name} results')


def plot_result(path, result, test, anchor=None, name='test'):
    """The R-D plot of a result as a PNG at ``path``: the curve, the published curves of the test set, the BD-rate
    reference dashed."""
    anchor, refs = result_references(result, test, anchor)
    curves = [(name, result['bpp'], result['psnr'])]
    curves += [(label, c['bpp'], c['psnr']) for codec, label in PUBLISHED.items()
               if codec != anchor and (c := get_anchor(test.name, codec))]
    reference = next(((label, c['bpp'], c['psnr']) for key, (label, c) in refs.items()
                      if key == os.path.basename(anchor)), None)
    partial = f', {test.partial[0]} of {test.partial[1]}' if test.partial else ''
    return plot_rd(path, curves, reference, title=f'R(D) upper bound on {test.name} ({result["num_images"]} images'
                                                  f'{partial}, bpp over {result["bpp_pixels"]} pixels)',
                   psnr_label=f'PSNR (RGB, dB): {CONVENTIONS["psnr"]}')


def result_record(result, test, name, model, model_name, weights, sha256, extra):
    """The results JSON: CompressAI's layout (name, results: bpp / psnr-rgb) plus the evaluation's details; no
    paths of this machine (the test set by file names and hashes, the weights by file name and sha256)."""
    return {
        'name': name, 'test-set': test.name, 'dataset': test.record,
        'lambdas': result['lambdas'], 'lmb_range': result['lmb_range'],
        'outside_lmb_range': result['outside_lmb_range'],
        'results': {'bpp': result['bpp'], 'psnr': result['psnr'], 'psnr-rgb': result['psnr'],
                    'psnr_of_mean_mse': result['psnr_of_mean_mse'],
                    'bpp_std': result['bpp_std'], 'psnr_std': result['psnr_std']},
        'psnr_conventions': CONVENTIONS, **extra, 'draws': result['draws'],
        'model': model_name, 'model_config': model.config.to_dict(), 'weights': weights, 'weights_sha256': sha256,
        **{key: result[key] for key in ('bpp_pixels', 'samples', 'seed', 'refine', 'num_images', 'skipped',
                                        'per_image', 'device', 'amp', 'tf32', 'noise', 'seconds')},
        **({'resumed': result['resumed']} if result.get('resumed') else {}),
        **({'parts': result['parts']} if set(result.get('parts', ())) - {WHOLE} else {}),  # a spread evaluation's
        'torch': torch.__version__,
    }


def publish(out, result, test, anchor, name, model, loaded, extra):
    """Print ``result``'s report, then write its JSON (:func:`result_record`, with ``extra``) and its plot together at
    ``out`` (:func:`lvae.evaluation.outputs.write_pair`); ``loaded`` is the model's
    :class:`lvae.models.LoadedModel`. The figures are printed before any file is written: a failed write loses none."""
    for skipped in result['skipped']:
        print(f'skipped {skipped["file"]}: {skipped["reason"]}', file=sys.stderr)
    text, comparisons = report(result, test, anchor, name)
    record = json_text(result_record(result, test, name, model, loaded.name, loaded.weights, loaded.sha256,
                                     {**comparisons, **extra}))
    print(f'{result["num_images"]} images, {len(result["lambdas"])} lambdas, {result["seconds"]:.1f} s on '
          f'{result["device"]}')
    print(text, flush=True)

    def write_json(tmp):
        with open(tmp, 'w') as f:
            f.write(record)

    json_path, png = write_pair(out, write_json, lambda tmp: plot_result(tmp, result, test, anchor, name))
    print(f'wrote {json_path} and {png}')
