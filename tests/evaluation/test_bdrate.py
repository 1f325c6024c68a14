"""BD-rate / BD-PSNR: lvae.bd_rate is bjontegaard's cubic method and the paper's polyfit definition; the CLI
reads result files and the shipped anchors (VTM 18.0, the authors' codecs, Yang & Mandt 2022's bound)."""
import json

import bjontegaard
import numpy as np
import pytest

import lvae
from lvae.bdrate import bd_psnr, bd_table, get_anchor, list_anchors, read_curve
from lvae.bdrate.__main__ import main


def polyfit_bd_rate(r1, p1, r2, p2):
    """Bjontegaard's definition: cubic fit of log-rate over PSNR, integrated over the common PSNR range."""
    f1, f2 = np.polyfit(p1, np.log(r1), 3), np.polyfit(p2, np.log(r2), 3)
    lo, hi = max(min(p1), min(p2)), min(max(p1), max(p2))
    i1, i2 = np.polyint(f1), np.polyint(f2)
    avg = ((np.polyval(i2, hi) - np.polyval(i2, lo)) - (np.polyval(i1, hi) - np.polyval(i1, lo))) / (hi - lo)
    return (np.exp(avg) - 1) * 100


@pytest.fixture
def curves():
    vtm = get_anchor('kodak')
    rng = np.random.default_rng(0)
    psnr = np.linspace(29, 41, 16)
    # a test curve with 16 points: the anchor's rate-PSNR relation, shifted and bent a little
    log_rate = np.interp(psnr, vtm['psnr'][::-1], np.log(vtm['bpp'][::-1]))
    test_bpp = np.exp(log_rate - 0.08 + 0.01 * (psnr - 35) + rng.normal(0, 0.003, 16))
    return vtm['bpp'], vtm['psnr'], test_bpp.tolist(), psnr.tolist()


def test_bd_rate_is_bjontegaard_cubic_and_the_polyfit_definition(curves):
    abpp, apsnr, tbpp, tpsnr = curves
    assert len(abpp) == 36 and len(tbpp) == 16
    ours = lvae.bd_rate(abpp, apsnr, tbpp, tpsnr)
    ref = bjontegaard.bd_rate(np.array(abpp), np.array(apsnr), np.array(tbpp), np.array(tpsnr), method='cubic',
                              require_matching_points=False, min_overlap=0)
    assert ours == pytest.approx(ref, abs=1e-9)
    assert ours == pytest.approx(polyfit_bd_rate(abpp, apsnr, tbpp, tpsnr), abs=1e-6)
    assert -10 < ours < -4  # about exp(-0.08) - 1 = -7.7 %
    # order of the points does not matter; pchip differs a little from cubic but agrees in sign
    assert lvae.bd_rate(abpp[::-1], apsnr[::-1], tbpp, tpsnr) == pytest.approx(ours, abs=1e-9)
    assert lvae.bd_rate(abpp, apsnr, tbpp, tpsnr, method='pchip') == pytest.approx(ours, abs=1.0)
    assert bd_psnr(abpp, apsnr, tbpp, tpsnr) > 0


def test_bd_rate_rejects_bad_curves():
    with pytest.raises(ValueError, match='at least 4'):
        lvae.bd_rate([1, 2, 3], [30, 31, 32], [1, 2, 3, 4], [30, 31, 32, 33])
    with pytest.raises(ValueError, match='non-positive'):
        lvae.bd_rate([0, 1, 2, 3], [30, 31, 32, 33], [1, 2, 3, 4], [30, 31, 32, 33])
    with pytest.raises(ValueError, match='method'):
        lvae.bd_rate([1, 2, 3, 4], [30, 31, 32, 33], [1, 2, 3, 4], [30, 31, 32, 33], method='linear')


def test_shipped_anchors_match_the_shared_files(shared_dir):
    import os
    assert set(list_anchors()['vtm-18.0']) == {'kodak', 'tecnick-rgb-1200', 'clic2022-test'}
    for name in list_anchors()['vtm-18.0']:
        curve = read_curve(os.path.join(shared_dir, 'anchors', 'vtm-18.0', f'{name}.json'))['curve']
        assert get_anchor(name) == {'bpp': curve['bpp'], 'psnr': curve['psnr']}, name
    # the published QARV-base BD-rates w.r.t. VTM 18.0 (shared/README.md) come out of the shipped curves
    published = {'kodak': -5.90, 'tecnick-rgb-1200': -8.94, 'clic2022-test': -6.91}
    for name, value in published.items():
        q, v = get_anchor(name, 'qarv_base'), get_anchor(name)
        assert lvae.bd_rate(v['bpp'], v['psnr'], q['bpp'], q['psnr']) == pytest.approx(value, abs=0.05), name


def test_cli_six_percent_fewer_bits_than_kodak_vtm_gives_minus_six(tmp_path, capsys):
    vtm = get_anchor('kodak')
    result = tmp_path / 'six.json'
    result.write_text(json.dumps({'name': 'six', 'test-set': 'kodak',
                                  'results': {'bpp': [b * 0.94 for b in vtm['bpp']], 'psnr': vtm['psnr']}}))
    assert main([str(result)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith('| mean of per-image PSNR (paper) | cubic'))
    assert float(row.split('|')[3]) == pytest.approx(-6.0, abs=0.1)
    assert 'w.r.t. VTM-18.0 on kodak' in out and 'no interval: the file has no per-image figures' in out


def test_cli_errors_name_the_problem(tmp_path, capsys):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"nothing": 1}')
    assert main([str(bad)]) == 2
    assert 'holds no R-D curve' in capsys.readouterr().err
    plain = tmp_path / 'plain.json'
    plain.write_text(json.dumps({'bpp': [1, 2, 3, 4], 'psnr': [30, 32, 34, 36]}))
    assert main([str(plain)]) == 2
    assert '--dataset' in capsys.readouterr().err
    assert main([str(plain), '--dataset', 'nowhere']) == 2
    assert "no vtm-18.0 curve for dataset 'nowhere'" in capsys.readouterr().err
    for results, words in [({'bpp': None, 'psnr': [30, 32, 34, 36]}, 'holds no R-D curve'),
                           ({'bpp': [1, 2, 3, 4], 'psnr': [30, None, 34, 36]}, 'results.psnr must be a list of finite'),
                           ({'bpp': [1, 2, 3, 4], 'psnr': [30, 32, 34]}, 'results.psnr has 3 values but results.bpp '
                                                                         'has 4'),
                           ({'bpp': [1, 2, 3, 4], 'psnr': [30, 32, 34, 36], 'psnr_of_mean_mse': 'x'},
                            'results.psnr_of_mean_mse must be a list')]:
        plain.write_text(json.dumps({'results': results, 'test-set': 'kodak'}))
        assert main([str(plain)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'error: {plain}') and words in err and len(err.splitlines()) == 1, err
    plain.write_text(json.dumps({'results': {'bpp': [1, 2, 3, 4], 'psnr': [30, 32, 34, 36], 'psnr_of_mean_mse': None},
                                 'test-set': 'kodak'}))
    assert main([str(plain)]) == 0   # a null optional field is an absent one


def row(table, convention, method='cubic'):
    """The BD-rate cell of one row of a BD table."""
    return next(line for line in table.splitlines() if line.startswith(f'| {convention}') and f'| {method}' in line
                ).split('|')[3].strip()


def test_curves_without_overlap_give_no_number():
    vtm = get_anchor('kodak')
    flat = {'bpp': [0.010, 0.011, 0.012, 0.013], 'psnr': [9.90, 9.91, 9.92, 9.93]}  # an untrained model
    assert np.isnan(lvae.bd_rate(vtm['bpp'], vtm['psnr'], flat['bpp'], flat['psnr']))
    assert np.isnan(bd_psnr(vtm['bpp'], vtm['psnr'], flat['bpp'], flat['psnr']))
    table = bd_table(flat, vtm)
    assert '| mean of per-image PSNR (paper) | cubic (paper) | n/a | n/a |' in table
    assert 'share no PSNR range' in table


def test_fewer_than_four_points_give_n_a_and_say_why():
    vtm = get_anchor('kodak')
    table = bd_table({'bpp': vtm['bpp'][:3], 'psnr': vtm['psnr'][:3]}, vtm, interval={'psnr': None},
                     interval_note='95% interval')
    assert row(table, 'mean of per-image PSNR') == 'n/a' and 'at least 4 points on the test curve, got 3' in table
    assert '[low, high]' not in table


def test_yang_mandt_2022_bound_is_shipped_with_its_source(shared_dir):
    import os
    assert set(list_anchors()['yang-mandt-2022']) == {'kodak', 'tecnick-rgb-1200'}
    for name in list_anchors()['yang-mandt-2022']:
        with open(os.path.join(shared_dir, 'anchors', 'published',
                               f'yang-mandt-2022-resnet_vae-{name}.json')) as f:
            published = json.load(f)['results']
        shipped = get_anchor(name, 'yang-mandt-2022')
        assert {key: shipped[key] for key in ('bpp', 'psnr', 'mse_255')} == published, name
    with open(lvae.evaluation.anchors.ANCHORS_FILE) as f:
        data = json.load(f)
    assert 'Yang & Mandt' in data['sources']['yang-mandt-2022'] and 'ICLR 2022' in data['sources']['yang-mandt-2022']
    assert data['labels']['yang-mandt-2022'] == 'previous bound (Yang & Mandt 2022)'


@pytest.mark.parametrize('dataset, expected', [('kodak', '-19.31'), ('tecnick-rgb-1200', '-22.52')])
def test_cli_gives_the_published_yang_mandt_bd_rates_against_vtm(shared_dir, capsys, dataset, expected):
    """The previous bound's BD-rates w.r.t. VTM 18.0 with the paper's BD function (shared/README.md)."""
    import os
    path = os.path.join(shared_dir, 'anchors', 'published', f'yang-mandt-2022-resnet_vae-{dataset}.json')
    assert main([path, '--anchor', 'vtm-18.0']) == 0
    out = capsys.readouterr().out
    assert row(out, 'mean of per-image PSNR (paper)') == expected
    assert f'w.r.t. VTM-18.0 on {dataset}' in out


def test_cli_against_the_previous_bound_in_both_conventions(tmp_path, capsys):
    """A curve with 10% fewer bits than Yang & Mandt's in both conventions (their mean MSE gives the PSNR of the
    mean MSE): -10% in each row, and no row compares two conventions."""
    ym = get_anchor('kodak', 'yang-mandt-2022')
    result = tmp_path / 'ten.json'
    mean_mse_psnr = (10 * np.log10(255 ** 2 / np.array(ym['mse_255']))).tolist()
    result.write_text(json.dumps({'name': 'ten', 'test-set': 'kodak', 'results': {
        'bpp': [b * 0.9 for b in ym['bpp']], 'psnr': ym['psnr'], 'psnr_of_mean_mse': mean_mse_psnr}}))
    assert main([str(result), '--anchor', 'yang-mandt-2022']) == 0
    out = capsys.readouterr().out
    assert 'w.r.t. previous bound (Yang & Mandt 2022) on kodak' in out
    assert float(row(out, 'mean of per-image PSNR (paper)')) == pytest.approx(-10.0, abs=0.05)
    assert float(row(out, 'PSNR of mean MSE |')) == pytest.approx(-10.0, abs=0.05)
    assert 'published as mean of per-image PSNR only' not in out
