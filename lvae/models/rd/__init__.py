"""The variable-rate ResNet VAE of "An Improved Upper Bound on the Rate-Distortion Function of Images"."""
from lvae.models.rd.model import RDConfig, VariableRateLossyVAE

__all__ = ['RDConfig', 'VariableRateLossyVAE']
