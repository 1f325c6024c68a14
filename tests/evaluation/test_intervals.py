"""Bootstrap intervals over images and the two PSNR conventions, on synthetic per-image figures."""
import json

import numpy as np
import pytest

import lvae
from lvae.bdrate import get_anchor
from lvae.bdrate.__main__ import main
from lvae.evaluation.intervals import bootstrap, draw_bd_rates
from lvae.evaluation.results import dataset_curves, per_image_figures, psnr


def synthetic_images(n=24, spread=0.3, seed=1):
    """Per-image figures (N, 16) around VTM 18.0's Kodak curve: image i needs exp(-0.3 + spread * u_i) times
    VTM's bits and its PSNR is VTM's shifted by up to +-3 dB (heterogeneous images when spread > 0)."""
    vtm = get_anchor('kodak')
    rng = np.random.default_rng(seed)
    target = np.linspace(29, 41, 16)
    log_rate = np.interp(target, vtm['psnr'][::-1], np.log(vtm['bpp'][::-1]))
    u = rng.uniform(-1, 1, size=(n, 1)) if spread else np.zeros((n, 1))
    bpp = np.exp(log_rate - 0.3 + spread * u)
    img_psnr = target + 3 * u
    return bpp, img_psnr, 10 ** (-img_psnr / 10)


def test_intervals_bracket_the_point_estimates():
    bpp, img_psnr, mse = synthetic_images()
    vtm = get_anchor('kodak')
    point = dataset_curves(bpp, img_psnr, mse)
    found = bootstrap(bpp, img_psnr, mse, anchors={'vtm': vtm}, resamples=500)
    for key in ('bpp', 'psnr', 'psnr_of_mean_mse'):
        low, high = np.array(found[key]).T
        assert (low < point[key]).all() and (point[key] < high).all(), key
    low, high = found['bd_rate']['vtm']['psnr']
    value = lvae.bd_rate(vtm['bpp'], vtm['psnr'], point['bpp'], point['psnr'])
    assert low < value < high and high - low > 1.0  # images that differ this much leave a spread of percents
    assert found['method'] == 'percentile bootstrap over images' and found['resamples'] == 500


def test_identical_images_collapse_the_interval_to_the_point():
    bpp, img_psnr, mse = synthetic_images(spread=0)
    vtm = get_anchor('kodak')
    point = dataset_curves(bpp, img_psnr, mse)
    found = bootstrap(bpp, img_psnr, mse, anchors={'vtm': vtm}, resamples=200)
    for key in ('bpp', 'psnr', 'psnr_of_mean_mse'):
        assert np.array(found[key]) == pytest.approx(np.stack([point[key]] * 2, axis=1), rel=1e-12), key
    value = lvae.bd_rate(vtm['bpp'], vtm['psnr'], point['bpp'], point['psnr'])
    assert found['bd_rate']['vtm']['psnr'] == pytest.approx([value, value], abs=1e-9)


def test_the_interval_is_reproducible_and_follows_the_seed():
    figures = synthetic_images()
    vtm = {'vtm': get_anchor('kodak')}
    a, b = bootstrap(*figures, anchors=vtm, resamples=300), bootstrap(*figures, anchors=vtm, resamples=300)
    c = bootstrap(*figures, anchors=vtm, resamples=300, seed=1)
    assert a == b and a['bd_rate'] != c['bd_rate'] and a['seed'] == 0 and c['seed'] == 1


def test_the_two_psnr_conventions_differ_on_heterogeneous_images():
    """The PSNR of the mean MSE is below the mean PSNR when images differ (Jensen) and equal when they do not."""
    curves = dataset_curves(*synthetic_images())
    assert (curves['psnr_of_mean_mse'] < curves['psnr'] - 0.2).all()  # 0.29 dB for +-3 dB
    same = dataset_curves(*synthetic_images(spread=0))
    assert same['psnr_of_mean_mse'] == pytest.approx(same['psnr'], abs=1e-9)
    assert psnr(np.array([1e-3])) == pytest.approx([30.0])


def test_codec_results_without_mse_get_it_from_their_psnr_but_multi_draw_results_do_not():
    rows = [{'file': 'a.png', 'bpp': [0.1, 0.2], 'psnr': [30.0, 40.0]}]
    bpp, img_psnr, mse = per_image_figures({'per_image': rows})
    assert mse == pytest.approx(np.array([[1e-3, 1e-4]]))
    assert per_image_figures({'per_image': rows, 'samples': 2}) is None
    with pytest.raises(ValueError, match='lists of one length'):
        per_image_figures({'per_image': rows + [{'bpp': [0.1], 'psnr': [30.0], 'mse': [1e-3]}]})


def test_draw_bd_rates_give_one_value_per_draw():
    vtm = get_anchor('kodak')
    curves = [dataset_curves(*synthetic_images(seed=s)) for s in (1, 2)]
    draws = {key: [c[key].tolist() for c in curves] for key in curves[0]}
    rates = draw_bd_rates(draws, vtm)
    assert len(rates['psnr']) == 2 and rates['psnr'][0] != rates['psnr'][1]
    assert rates['psnr'][0] == pytest.approx(lvae.bd_rate(vtm['bpp'], vtm['psnr'], curves[0]['bpp'],
                                                          curves[0]['psnr']))


def test_cli_prints_the_interval_of_a_result_with_per_image_figures(tmp_path, capsys):
    bpp, img_psnr, mse = synthetic_images()
    curves = dataset_curves(bpp, img_psnr, mse)
    path = tmp_path / 'synthetic.json'
    path.write_text(json.dumps({
        'name': 'synthetic', 'test-set': 'kodak', 'results': {k: v.tolist() for k, v in curves.items()},
        'intervals': {'resamples': 400, 'seed': 3},
        'per_image': [{'file': f'{i}.png', 'bpp': bpp[i].tolist(), 'psnr': img_psnr[i].tolist(),
                       'mse': mse[i].tolist()} for i in range(len(bpp))]}))
    assert main([str(path)]) == 0
    first = capsys.readouterr().out
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == first
    cell = next(line for line in first.splitlines() if line.startswith('| mean of per-image PSNR (paper) | cubic')
                ).split('|')[3]
    value, low, high = (float(v) for v in cell.replace('[', ' ').replace(']', ' ').replace(',', ' ').split())
    assert low < value < high
    assert '95% interval, percentile bootstrap over images (24 images, 400 resamples, seed 3)' in first
    assert 'it covers which images were drawn, not the choice of curve fit' in first


def result_file(path, name, bpp, img_psnr, mse):
    """An eval-var-rate.py-like result JSON of per-image figures on Kodak."""
    curves = dataset_curves(bpp, img_psnr, mse)
    path.write_text(json.dumps({
        'name': name, 'test-set': 'kodak', 'results': {k: v.tolist() for k, v in curves.items()},
        'per_image': [{'file': f'{i}.png', 'bpp': bpp[i].tolist(), 'psnr': img_psnr[i].tolist(),
                       'mse': mse[i].tolist()} for i in range(len(bpp))]}))
    return str(path)


def test_a_result_of_the_same_images_is_resampled_with_the_test():
    # The plain curve and a uniformly better one (8% fewer bits on every image): the images differ a lot, the
    # difference does not. Paired, the interval of the BD-rate is the difference's (a point); unpaired, the
    # spread of the images.
    bpp, img_psnr, mse = synthetic_images()
    plain = dataset_curves(bpp, img_psnr, mse)
    paired = bootstrap(0.92 * bpp, img_psnr, mse, paired={'plain': (bpp, img_psnr, mse)}, resamples=300)
    unpaired = bootstrap(0.92 * bpp, img_psnr, mse, anchors={'plain': plain}, resamples=300)
    assert paired['bd_rate']['plain']['psnr'] == pytest.approx([-8, -8], abs=1e-6)
    low, high = unpaired['bd_rate']['plain']['psnr']
    assert high - low > 5 and paired['paired'] == ['plain'] and 'paired' not in unpaired
    with pytest.raises(ValueError, match='same 24 images'):
        bootstrap(bpp, img_psnr, mse, paired={'plain': (bpp[:5], img_psnr[:5], mse[:5])})


def test_cli_pairs_a_result_with_a_result_anchor_of_the_same_images(tmp_path, capsys):
    bpp, img_psnr, mse = synthetic_images()
    plain = result_file(tmp_path / 'plain.json', 'plain', bpp, img_psnr, mse)
    better = result_file(tmp_path / 'refined.json', 'refined', 0.92 * bpp, img_psnr, mse)
    assert main([better, '--anchor', plain]) == 0
    out = capsys.readouterr().out
    assert '| -8.00 [-8.00, -8.00] |' in out and 'paired: plain.json resampled with the same images' in out
    other = result_file(tmp_path / 'other.json', 'other', bpp[:20], img_psnr[:20], mse[:20])  # other images
    assert main([better, '--anchor', other]) == 0
    assert 'paired' not in capsys.readouterr().out


def test_cli_warns_where_the_rows_are_not_the_whole_curve_or_not_its_means(tmp_path, capsys):
    bpp, img_psnr, mse = synthetic_images()
    path = tmp_path / 'r.json'
    result_file(path, 'r', bpp[:5], img_psnr[:5], mse[:5])
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, 'num_images': 100}))   # a 100-image curve with 5 rows
    assert main([str(path)]) == 0
    err = capsys.readouterr().err
    assert 'holds per-image rows for 5 of the 100 images of its curve: the interval is of those 5' in err
    path.write_text(json.dumps({**data, 'results': {**data['results'],
                                                    'bpp': [1.1 * v for v in data['results']['bpp']]}}))
    assert main([str(path)]) == 0
    err = capsys.readouterr().err
    assert 'the means of its per-image rows are not its curve (results.bpp' in err and 'rows for' not in err
    result_file(path, 'r', bpp, img_psnr, mse)
    assert main([str(path)]) == 0 and 'warning' not in capsys.readouterr().err


def test_a_bd_rate_whose_two_fits_differ_beyond_its_interval_says_so():
    from lvae.evaluation.report import bd_table
    anchor = get_anchor('kodak')
    test = {'bpp': [0.1, 0.2, 0.45, 0.9, 1.6], 'psnr': [27.0, 29.5, 32.4, 35.6, 38.0]}
    rows = {line.split('|')[2].strip(): float(line.split('|')[3].split()[0])
            for line in bd_table(test, anchor).splitlines() if line.startswith('| mean of per-image PSNR')}
    gap = abs(rows['cubic (paper)'] - rows['pchip'])
    assert gap > 0.02
    centre = rows['cubic (paper)']
    narrow = bd_table(test, anchor, interval={'psnr': [centre - gap / 4, centre + gap / 4]}, interval_note='x')
    wide = bd_table(test, anchor, interval={'psnr': [centre - gap, centre + gap]}, interval_note='x')
    assert 'warning: the cubic and pchip fits differ by more than the interval is wide' in narrow
    assert 'warning' not in wide
