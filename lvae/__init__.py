"""lvae: an upper bound on the information rate-distortion function R(D) of images.

Reproduces Duan et al., "An Improved Upper Bound on the Rate-Distortion Function of Images" (ICIP 2023).

>>> import lvae
>>> model = lvae.get_model('rd_model_base', pretrained=True)   # the authors' published weights
>>> lvae.accel.prepare(model, 'cpu')                              # its fastest faithful form on a CPU (in place)
"""
from lvae import accel
from lvae.models import RDConfig, VariableRateLossyVAE, get_model, list_models, register_model

__version__ = '0.1.0'


def __getattr__(name):
    # lvae.bd_rate / lvae.bd_psnr, imported on first use so that `python -m lvae.bdrate` runs a fresh module
    if name in ('bd_rate', 'bd_psnr'):
        from lvae import bdrate
        return getattr(bdrate, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

__all__ = ['accel', 'get_model', 'list_models', 'register_model', 'VariableRateLossyVAE', 'RDConfig', 'bd_rate', 'bd_psnr']
