"""Models: the registry (:mod:`~lvae.models.registry`), the R(D) bound model and its zoo (:mod:`~lvae.models.rd`,
registered on import) and the loader the scripts use (:mod:`~lvae.models.loading`)."""
from lvae.models.registry import get_model, is_weightless, list_models, register_model
from lvae.models.rd import RDConfig, VariableRateLossyVAE, zoo  # noqa: F401  (registers the zoo)
from lvae.models.rd.zoo import parse_model_args, registered_config
from lvae.models.loading import LoadedModel, load_model, model_from_checkpoint

__all__ = ['LoadedModel', 'RDConfig', 'VariableRateLossyVAE', 'get_model', 'is_weightless', 'list_models',
           'load_model', 'model_from_checkpoint', 'parse_model_args', 'register_model', 'registered_config']
