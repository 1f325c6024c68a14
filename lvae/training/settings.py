"""What a training run is, typed: :class:`RunSettings` (model, data, validation, checkpoints, logging, device) with its
:class:`~lvae.training.Recipe` (the optimisation). Field names are ``train-var-rate.py``'s flags, so a run's flags
(``args.json``, a checkpoint's ``'args'``) are :meth:`RunSettings.to_flags` and come back with :meth:`from_flags`.

>>> settings = RunSettings(model='rd_model_tiny', trainset='gaussian-64', valset='gaussian-64', batch_size=8,
...                        recipe=Recipe(iterations=1000, lr=2e-3))
"""
from dataclasses import asdict, dataclass, field, fields

from lvae.cli import UsageError
from lvae.data import parse_transform
from lvae.models import list_models, parse_model_args
from lvae.training.recipe import Recipe

WB_MODES = ('disabled', 'offline', 'online')


@dataclass
class RunSettings:
    """A training run besides its recipe; the defaults are ``train-var-rate.py``'s. Checked when made: a bad value
    is a :class:`~lvae.cli.UsageError` naming the flag."""
    model: str = 'rd_model_base'
    model_args: str = ''          # config overrides as Python literals (lvae.models.parse_model_args)
    weights: str = None           # a new run starts from these weights (file or URL)
    trainset: str = 'coco-train2017'
    transform: str = 'crop=256,hflip=True'
    valset: str = 'kodak'
    val_steps: int = 8            # validation lambdas, log-spaced over the model's lmb_range
    val_images: int = 0           # the first N validation images (0: all)
    workers: int = 4              # DataLoader workers per process
    batch_size: int = 16          # images per process and micro-step
    max_bad_steps: int = 5        # non-finite updates in a row before the run stops
    compile: bool = False
    fixseed: bool = False
    seed: int = 0
    device: str = 'auto'
    name: str = None              # the run folder's name (default <model>_<n>)
    runs_root: str = 'runs'
    resume: str = None            # the run folder or name this run continues
    eval_interval: int = 2000
    save_interval: int = 0
    log_interval: int = 20
    wbmode: str = 'disabled'
    wbproject: str = 'lvae'       # the wandb project, and the folder of runs under runs_root
    wbentity: str = None
    wbgroup: str = None
    wbtags: str = ''
    recipe: Recipe = field(default_factory=Recipe)

    def __post_init__(self):
        for name in ('batch_size', 'eval_interval', 'log_interval', 'val_steps', 'max_bad_steps'):
            if getattr(self, name) < 1:
                raise UsageError(f'--{name} must be >= 1, got {getattr(self, name)}')
        for name in ('workers', 'val_images', 'save_interval'):
            if getattr(self, name) < 0:
                raise UsageError(f'--{name} must be >= 0, got {getattr(self, name)}')
        if self.model not in list_models():
            raise UsageError(f'unknown model {self.model!r}; known: {", ".join(list_models())}')
        if self.wbmode not in WB_MODES:
            raise UsageError(f'--wbmode must be one of {", ".join(WB_MODES)}, got {self.wbmode!r}')
        self.transform_kw, self.model_kw = parse_transform(self.transform), parse_model_args(self.model_args)

    @property
    def images_per_update(self):
        """Images per process and update (micro-steps included)."""
        return self.batch_size * self.recipe.accum_num

    @classmethod
    def from_flags(cls, flags):
        """The settings of a flat dict of flags (an ``argparse`` namespace's ``vars``, ``args.json``, a checkpoint's
        ``'args'``); keys of neither the settings nor the recipe are ignored."""
        own = {f.name for f in fields(cls)} - {'recipe'}
        return cls(**{k: v for k, v in flags.items() if k in own}, recipe=Recipe.from_flags(flags))

    def to_flags(self):
        """The flat dict of flags these settings are (what :meth:`from_flags` reads)."""
        flags = {f.name: getattr(self, f.name) for f in fields(self) if f.name != 'recipe'}
        return {**flags, **asdict(self.recipe)}
