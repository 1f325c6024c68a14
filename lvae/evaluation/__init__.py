"""Evaluation: the R(D) bound of a model on a test set (:mod:`~lvae.evaluation.bound`,
:mod:`~lvae.evaluation.testsets`, :mod:`~lvae.evaluation.refine`), its comparison with codecs and with the truth
(:mod:`~lvae.evaluation.bdrate`, :mod:`~lvae.evaluation.anchors`, :mod:`~lvae.evaluation.codecs`,
:mod:`~lvae.evaluation.intervals`), and what it writes and prints (:mod:`~lvae.evaluation.results`,
:mod:`~lvae.evaluation.plotting`, :mod:`~lvae.evaluation.report`).

>>> from lvae.evaluation import evaluate_bound
>>> result = evaluate_bound(model, 'kodak', steps=16)   # bpp (bits per original pixel) and PSNR per lambda
"""
from lvae.lazy import exports

_FROM = {**dict.fromkeys(['BPP_PIXELS', 'NOISE', 'InvalidImagesError', 'bound_of_image', 'compile_for_eval',
                          'default_device', 'evaluate_bound', 'lambda_grid', 'pad_to_multiple'],
                         'lvae.evaluation.bound'),
         'TestSet': 'lvae.evaluation.testsets', 'as_test_set': 'lvae.evaluation.testsets'}
__all__ = list(_FROM)
__getattr__, __dir__ = exports(__name__, _FROM)  # torch is imported at the first use of one of these
