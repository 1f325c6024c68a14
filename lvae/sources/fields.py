"""The sources lvae ships, registered on import: ``gaussian-64``."""
from lvae.sources.gaussian import GaussianField
from lvae.sources.registry import register_source

# The photographs' colour axes and spectral shape at a contrast that stays inside [0, 1]: the parameters that
# `python -m lvae.sources fit ../shared/datasets/photos` prints (the project's 49 training photographs).
GAUSSIAN_64 = register_source(GaussianField(
    name='gaussian-64', size=64, mean=[0.4347, 0.4217, 0.4074],
    basis=[[0.555877, 0.736688, 0.385086], [0.582777, -0.015032, -0.812493], [0.592765, -0.676066, 0.437681]],
    std=[0.123474, 0.046384, 0.017656], alpha=[2.458, 2.9745, 2.6321],
    origin='fit to the 49 training photographs (3136 crops of 64x64, seed 0), contrast scaled to a largest '
           'per-channel std of 0.08'))
