"""The numerical contract (docs/contract.md): the published key layout and the authors' conformance vectors, on the
reference model and on the model prepared for the CPU by lvae.accel. The tiny vector ships in tests/fixtures, so
every clone checks it; the small one and the key layout come from the project's shared folder."""
import ast
import os

import pytest
import torch

import lvae
from lvae import accel
from lvae.models.rd.model import VariableRateLossyVAE


@pytest.fixture(scope='module')
def spec(shared_dir):
    return os.path.join(shared_dir, 'spec')


DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fixtures')
TINY = 'rd_conformance_tiny.pt'


@pytest.fixture(scope='module', params=[TINY, 'rd_conformance_small.pt'])
def conformance(request):
    folder = DATA if request.param == TINY else request.getfixturevalue('spec')
    return torch.load(os.path.join(folder, request.param), weights_only=True)


def test_the_shipped_tiny_vector_is_the_spec_file(spec):
    with open(os.path.join(DATA, TINY), 'rb') as ours, open(os.path.join(spec, TINY), 'rb') as theirs:
        assert ours.read() == theirs.read()


@pytest.fixture(scope='module', params=['reference', 'prepared'])
def conformance_model(conformance, request):
    """The conformance weights in the reference model, and in the model lvae.accel prepares for the CPU."""
    model = VariableRateLossyVAE.from_config(conformance['config'])
    model.load_state_dict(conformance['state_dict'], strict=True)
    if request.param == 'prepared':
        accel.prepare(model, 'cpu')
    return model.eval()


def test_rd_model_base_matches_published_state_dict(spec):
    with open(os.path.join(spec, 'rd_model_base.state_dict.tsv')) as f:
        header, *rows = [line.rstrip('\n').split('\t') for line in f if line.strip()]
    assert header == ['key', 'shape', 'dtype']
    expected = {key: tuple(ast.literal_eval(shape)) for key, shape, _ in rows}
    model = lvae.get_model('rd_model_base')
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert len(ours) == 1090
    assert sum(p.numel() for p in model.parameters()) == 186_670_384
    fake = {k: torch.zeros(shape) for k, shape in expected.items()}
    model.load_state_dict(fake, strict=True)


def _rel(a, b):
    return abs(float(torch.as_tensor(a).detach()) / float(b) - 1)


@pytest.mark.parametrize('index', [0, 1])
def test_forward_matches_reference(conformance, conformance_model, index):
    """The training forward, with autograd recording: the prepared model's training arrangement (folds, the
    C++ weight-gradient convolution) meets the contract too."""
    case = conformance['cases'][index]
    torch.manual_seed(case['seed'])
    out = conformance_model(case['image'], lmb=case['lmb'])
    assert out['loss'].requires_grad
    for key in ('loss', 'bppix', 'psnr'):
        assert _rel(out[key], case[key]) < 1e-5, (key, float(out[key]), float(case[key]))


@pytest.mark.parametrize('index', [0, 1])
def test_forward_end2end_matches_reference(conformance, conformance_model, index):
    case = conformance['cases'][index]
    with torch.no_grad():
        emb = conformance_model.lmb_embed(case['lmb'])
        torch.manual_seed(case['seed'])
        x_hat, stats = conformance_model.forward_end2end(case['image'], case['lmb'])
    torch.testing.assert_close(emb, case['lmb_embedding'], rtol=1e-4, atol=1e-6)
    kl = torch.stack([s['kl'].sum(dim=(1, 2, 3)) for s in stats])
    assert kl.shape == case['kl_per_latent'].shape
    torch.testing.assert_close(kl, case['kl_per_latent'], rtol=1e-4, atol=0)
    torch.testing.assert_close(x_hat, case['x_hat'], rtol=0, atol=1e-4)


def test_unconditional_sample_matches_reference(conformance, conformance_model):
    s = conformance['sample']
    torch.manual_seed(s['seed'])
    image = conformance_model.unconditional_sample(s['lmb'], bhw_repeat=tuple(s['bhw']), t=s['t'])
    torch.testing.assert_close(image, s['image'], rtol=0, atol=1e-4)
