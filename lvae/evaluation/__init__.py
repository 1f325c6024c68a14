"""Evaluation: the R(D) bound of a model on a test set (:mod:`~lvae.evaluation.bound`,
:mod:`~lvae.evaluation.testsets`, :mod:`~lvae.evaluation.refine`), its comparison with codecs and with the truth
(:mod:`~lvae.evaluation.bdrate`, :mod:`~lvae.evaluation.anchors`, :mod:`~lvae.evaluation.codecs`,
:mod:`~lvae.evaluation.intervals`), and what it writes and prints (:mod:`~lvae.evaluation.results`,
:mod:`~lvae.evaluation.plotting`, :mod:`~lvae.evaluation.report`).

>>> from lvae.evaluation import evaluate_bound
>>> result = evaluate_bound(model, 'kodak', steps=16)   # bpp (bits per original pixel) and PSNR per lambda
"""
from lvae.evaluation.bound import (BPP_PIXELS, NOISE, InvalidImagesError, bound_of_image, compile_for_eval,
                                   default_device, evaluate_bound, lambda_grid, pad_to_multiple)
from lvae.evaluation.testsets import TestSet, as_test_set

__all__ = ['BPP_PIXELS', 'NOISE', 'InvalidImagesError', 'TestSet', 'as_test_set', 'bound_of_image',
           'compile_for_eval', 'default_device', 'evaluate_bound', 'lambda_grid', 'pad_to_multiple']
