"""The model registry and the zoo table of docs/contract.md."""
import pytest
import torch

import lvae
from lvae.models.rd.model import LatentVariableBlock
from lvae.models.rd.zoo import CONFIGS

# docs/contract.md's zoo table: parameters and state-dict entries.
PAPER_ZOO = {
    'rd_model_base': (186_670_384, 1090),
    'rd_ablation_base_nosmooth': (186_670_384, 1090),
    'rd_ablation_c128_l10': (147_485_616, 825),
    'rd_ablation_c96_l15': (111_829_072, 1090),
    'rd_ablation_c64_l15': (55_792_496, 1090),
    'rd_ablation_c64_l10': (46_111_344, 825),
    'rd_ablation_c64_l5': (34_178_160, 560),
    'rd_ablation_c64_l5_nosmooth': (34_178_160, 560),
}


def test_list_models_has_the_paper_zoo_and_cpu_configs():
    names = lvae.list_models()
    assert set(PAPER_ZOO) | {'rd_model_small', 'rd_model_tiny'} <= set(names)
    assert lvae.list_models('rd_ablation_c64*') == ['rd_ablation_c64_l10', 'rd_ablation_c64_l15',
                                                     'rd_ablation_c64_l5', 'rd_ablation_c64_l5_nosmooth']


@pytest.mark.parametrize('name', sorted(PAPER_ZOO))
def test_paper_zoo_sizes(name):
    with torch.device('meta'):  # shapes and counts only: no memory, no initialisation work
        model = lvae.get_model(name)
    params, entries = PAPER_ZOO[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == entries
    assert model.config.smooth_mean == ('nosmooth' not in name)


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_every_registered_model_builds_as_its_config_says_and_the_small_ones_run(name):
    with torch.device('meta'):
        model = lvae.get_model(name)
    cfg = model.config
    heads = [m.posterior for m in model.modules() if isinstance(m, LatentVariableBlock)]
    stages = [j for j, n in enumerate(cfg.dec_nums) for _ in range(n)]
    assert [h.out_channels for h in heads] == [2 * cfg.z_dims[j] for j in stages]        # each latent's (mean, std)
    assert [h.in_channels for h in heads] == [cfg.dec_dims[j] for j in stages]
    assert model.encoder.enc_blocks[0].out_channels == cfg.enc_dims[0]
    if sum(p.numel() for p in model.parameters()) < 5_000_000:
        out = lvae.get_model(name)(torch.rand(2, 3, 64, 128))
        assert torch.isfinite(out['loss']) and out['bppix'] > 0


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match='unknown model .rd_model_huge.*rd_model_base'):
        lvae.get_model('rd_model_huge')


def test_overrides_change_the_config():
    model = lvae.get_model('rd_model_tiny', lmb_range=(16, 1024))
    assert model.config.lmb_range == [16.0, 1024.0]
    with pytest.raises(ValueError, match='unknown config field'):
        lvae.get_model('rd_model_tiny', lmb_rnage=(16, 1024))


def test_register_model_rejects_a_second_entry_of_the_same_name():
    def rd_model_tiny(pretrained=False, **kw):
        return None
    with pytest.raises(ValueError, match='registered twice'):
        lvae.register_model(rd_model_tiny)
