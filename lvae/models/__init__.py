"""Models: the registry and the R(D) bound model zoo (importing this registers the zoo)."""
from lvae.models.registry import get_model, list_models, register_model
from lvae.models.rd import VariableRateLossyVAE, RDConfig, zoo  # noqa: F401  (registers the zoo)

__all__ = ['get_model', 'list_models', 'register_model', 'VariableRateLossyVAE', 'RDConfig']
