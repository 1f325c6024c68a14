"""lvae: an upper bound on the information rate-distortion function R(D) of images.

Reproduces Duan et al., "An Improved Upper Bound on the Rate-Distortion Function of Images" (ICIP 2023).

>>> import lvae
>>> model = lvae.get_model('rd_model_base', pretrained=True)   # the authors' published weights
>>> lvae.accel.prepare(model, 'cpu')                              # its fastest faithful form on a CPU (in place)

docs/architecture.md maps the package: models and layers at the bottom, then speed (accel), inputs (data),
sources with a known R(D), evaluation, training, and the command-line tools on top.
"""
__version__ = '0.1.0'

from lvae.lazy import exports  # noqa: E402

_FROM = {'accel': 'lvae.accel', 'bd_psnr': 'lvae.evaluation.bdrate', 'bd_rate': 'lvae.evaluation.bdrate',
         **dict.fromkeys(['RDConfig', 'VariableRateLossyVAE', 'get_model', 'list_models', 'load_model',
                          'register_model'], 'lvae.models')}
__all__ = list(_FROM)
__getattr__, __dir__ = exports(__name__, _FROM)  # torch is imported at the first use of one of these
