"""``python -m lvae.anchors FOLDER --codec jpeg``: anchor curves of codecs for any image folder (the library is
:mod:`lvae.evaluation.codecs`)."""
from lvae.evaluation.codecs import CODECS, DEFAULT_QUALITIES, anchor_curve, make_codec

__all__ = ['CODECS', 'DEFAULT_QUALITIES', 'anchor_curve', 'make_codec']
