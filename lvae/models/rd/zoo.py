"""Registered R(D) bound models: the paper's base model and ablations (docs/contract.md, "The model zoo"), and
small configs that train on a CPU; what a config is (:func:`registered_config`) and how ``--model_args`` override
it (:func:`parse_model_args`)."""
import ast
import os

from lvae.checkpoint import load_weights
from lvae.models.registry import list_models, pretrained_cfg, register_model
from lvae.models.rd.model import RDConfig, VariableRateLossyVAE

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'weights')

# Where ``pretrained=True`` finds each model's weights, recorded in the registry (lvae.models.registry.pretrained_cfg):
# a URL (downloaded once into torch's hub cache) or a file shipped inside the package; ``sha256`` is checked when
# given.
WEIGHTS = {
    'rd_model_base': {
        'source': 'https://huggingface.co/duanzh0/my-model-weights/resolve/main/rd_model_base-200k-feb14-2023.pt',
    },
    # Trained by this project on a CPU at a learning rate of 2e-3 (docs/training.md, "The shipped model"): EMA
    # weights after 4,000 iterations.
    'rd_model_small': {
        'source': os.path.join(WEIGHTS_DIR, 'rd_model_small.pt'),
        'sha256': 'f0e7793aa5a0cdeec706ec375e5762d52b54a9718c7fed410e1d10fe95467d40',
    },
}


def paper_config(c, dec_nums, smooth_mean=True):
    """The paper's family: widths ``c * [2, 4, 5, 6, 6]`` (encoder) and ``c * [6, 6, 5, 4, 2]`` (decoder)."""
    return {
        'enc_dims': [c * k for k in (2, 4, 5, 6, 6)], 'enc_nums': [6, 6, 6, 4, 4],
        'dec_dims': [c * k for k in (6, 6, 5, 4, 2)], 'dec_nums': list(dec_nums),
        'z_dims': [32] * 5, 'lmb_embed_dim': [256, 256], 'sin_period': 64, 'lmb_range': [4.0, 2048.0],
        'smooth_mean': smooth_mean,
        'im_shift': -0.4546259594901961, 'im_scale': 3.67572653978347,
    }


CONFIGS = {
    'rd_model_base': paper_config(128, (1, 2, 3, 4, 5)),
    'rd_ablation_base_nosmooth': paper_config(128, (1, 2, 3, 4, 5), smooth_mean=False),
    'rd_ablation_c128_l10': paper_config(128, (1, 1, 2, 3, 3)),
    'rd_ablation_c96_l15': paper_config(96, (1, 2, 3, 4, 5)),
    'rd_ablation_c64_l15': paper_config(64, (1, 2, 3, 4, 5)),
    'rd_ablation_c64_l10': paper_config(64, (1, 2, 2, 2, 3)),
    'rd_ablation_c64_l5': paper_config(64, (1, 1, 1, 1, 1)),
    'rd_ablation_c64_l5_nosmooth': paper_config(64, (1, 1, 1, 1, 1), smooth_mean=False),
    # CPU-sized configs (not in the paper): same architecture, fewer and narrower blocks.
    'rd_model_small': {**paper_config(16, (1, 1, 2, 2, 2)), 'enc_nums': [2, 2, 2, 2, 2],
                       'z_dims': [16] * 5, 'lmb_embed_dim': [64, 64]},
    'rd_model_tiny': {**paper_config(8, (1, 1, 1, 1, 1)), 'enc_nums': [1, 1, 1, 1, 1],
                      'z_dims': [4] * 5, 'lmb_embed_dim': [32, 32]},
}


def registered_config(name=None, overrides=None, config=None):
    """Every field of the config of zoo model ``name`` with ``overrides`` (a dict), or of ``config``, as a plain dict
    in its normal form: two configs build the same model exactly when these are equal."""
    if config is None:
        if name not in CONFIGS:
            raise ValueError(f'unknown model {name!r}; known models: {", ".join(sorted(CONFIGS))}')
        config = {**CONFIGS[name], **(overrides or {})}
    return RDConfig.from_dict(dict(config)).to_dict()


def config_difference(a, b):
    """The fields, sorted, in which two configs (dicts, as :func:`registered_config` returns them) differ."""
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def parse_model_args(text):
    """``"lmb_range=(4,2048), smooth_mean=False"`` -> dict of config overrides.

    Every key must be an :class:`RDConfig` field and every value a Python literal (number, string, tuple,
    list, bool, None); nothing is evaluated: the text is parsed with :mod:`ast`. Raises ValueError with a
    message naming the offending part.
    """
    if not text or not text.strip():
        return {}
    try:
        call = ast.parse(f'_({text})', mode='eval').body
    except SyntaxError as e:
        raise ValueError(f'--model_args {text!r} is not a list of KEY=VALUE literals ({e.msg}); '
                         f'example: "lmb_range=(16,1024)"') from None
    if not isinstance(call, ast.Call) or call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError(f'--model_args {text!r}: expected comma-separated KEY=VALUE pairs, e.g. '
                         f'"lmb_range=(16,1024)"')
    fields = RDConfig.__dataclass_fields__
    out = {}
    for kw in call.keywords:
        if kw.arg not in fields:
            raise ValueError(f'--model_args: unknown config field {kw.arg!r}; known: {", ".join(fields)}')
        try:
            out[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f'--model_args: the value of {kw.arg} must be a Python literal (number, string, '
                             f'tuple, list, bool), got {ast.unparse(kw.value)!r}') from None
    return out


def build(name, pretrained=False, **overrides):
    """Build zoo model ``name`` with config ``overrides``; load weights as :func:`lvae.get_model` describes."""
    model = VariableRateLossyVAE.from_config({**CONFIGS[name], **overrides})
    if pretrained is True:
        entry = pretrained_cfg(name)
        if entry is None:
            raise ValueError(f'no pretrained weights are registered for {name!r}; models with weights: '
                             f'{", ".join(list_models(pretrained=True))}')
        load_weights(model, entry['source'], sha256=entry['sha256'])
    elif pretrained:
        load_weights(model, pretrained)
    return model


def _register(name):
    def factory(pretrained=False, **overrides):
        return build(name, pretrained=pretrained, **overrides)
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f'{name}: ``get_model({name!r}, pretrained=False, **config_overrides)``.'
    register_model(factory, pretrained=WEIGHTS.get(name))


for _name in CONFIGS:
    _register(_name)
