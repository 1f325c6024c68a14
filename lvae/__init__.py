"""lvae: an upper bound on the information rate-distortion function R(D) of images.

Reproduces Duan et al., "An Improved Upper Bound on the Rate-Distortion Function of Images" (ICIP 2023).

>>> import lvae
>>> model = lvae.get_model('rd_model_base', pretrained=True)   # the authors' published weights
"""
from lvae.bdrate import bd_psnr, bd_rate
from lvae.models import RDConfig, VariableRateLossyVAE, get_model, list_models, register_model

__version__ = '0.1.0'

__all__ = ['get_model', 'list_models', 'register_model', 'VariableRateLossyVAE', 'RDConfig', 'bd_rate', 'bd_psnr']
