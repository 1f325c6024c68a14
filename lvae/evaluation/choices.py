"""What an evaluation's settings may take and their defaults, importable without torch (``eval-var-rate.py --help``
answers before torch is loaded): the models, pixel counts, noise, anchors and refinement, and argparse's types."""
import argparse

DEFAULT_MODEL = 'rd_model_small'
BPP_PIXELS = ('original', 'padded')
# Where the posterior draws are made. 'device': on the model's device (no host work or copy; the draws differ
# between device types). 'cpu': on CPU generators, then copied: the same draws on every device. A CPU makes the
# 78M draws of one Kodak image at 16 lambdas for rd_model_base in 0.58 s (2-core EPYC), more than an H100 takes
# for the image's whole evaluation in bf16 (0.5 s, benchmarks/RESULTS.md), so 'device' is the default.
NOISE = ('device', 'cpu')
DEFAULT_ANCHOR = 'vtm-18.0'
TRUE_RD = 'true-rd'  # the exact R(D) of a source (lvae.sources), where the dataset is one
AUTO = 'auto'  # refinement to convergence (lvae.evaluation.refine.Convergence)
AUTO_LR = 0.03  # where 'auto' starts
FIXED_LR = 0.01  # the learning rate of a fixed number of steps (``refine=N``)
MAX_LR = 1.0  # an Adam step moves each offset by about lr: more than 1 throws a posterior far from the data


def lambdas_per_forward(text):
    """--lmb-batch: 'auto' or a positive integer."""
    if text == 'auto' or (text.isdigit() and int(text) > 0):
        return text if text == 'auto' else int(text)
    raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")


def refine_steps(text):
    """--refine: a number of steps (checked >= 0 with the other flags), or 'auto'."""
    if text == AUTO or text.lstrip('-').isdigit():
        return text if text == AUTO else int(text)
    raise argparse.ArgumentTypeError(f"expected a number of steps >= 0 or 'auto', got {text!r}")
