"""What training reads: the training set of ``--trainset`` (random crops of a folder, or fresh draws of a source) and
this rank's endless batches of it."""
import torch

from lvae.data import ImageFolderCrops
from lvae.sources import GaussianField, resolve
from lvae.training.signals import ignore_stop_signals


class SourceSamples(torch.utils.data.Dataset):
    """Fresh draws of ``source`` (:mod:`lvae.sources`, one with a known R(D)) as a training set: item ``i`` ->
    ``(image, 0)``, a new draw at every access from torch's RNG (which the DataLoader seeds per worker), so no
    image is seen twice; ``length`` items make one nominal pass over the data."""

    def __init__(self, source, length=10_000):
        self.source, self.length = source, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return self.source.sample(1)[0], 0

    def __repr__(self):
        return f'{type(self).__name__}({self.source.name}, fresh {self.source.size}x{self.source.size} draws)'


def training_set(name, crop=256, hflip=True):
    """The training set of ``--trainset``: fresh draws of a source (its own image size; ``crop`` and ``hflip``
    do not apply), else random crops of an image folder or known dataset (:class:`ImageFolderCrops`)."""
    found = resolve(name)
    return SourceSamples(found) if isinstance(found, GaussianField) else ImageFolderCrops(found, crop=crop, hflip=hflip)


def endless_batches(dataset, batch_size, rank=0, world=1, seed=0, workers=4, pin_memory=False, epoch=0):
    """This rank's share of ``dataset`` in batches, forever: ``(epoch, batch)``, re-shuffled at each pass over
    the data (a ``DistributedSampler`` with ``seed``), starting at pass ``epoch``. Loader workers ignore
    SIGTERM / SIGINT, which the training process handles (:mod:`lvae.training.signals`)."""
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                                  drop_last=len(dataset) >= world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                         pin_memory=pin_memory, persistent_workers=workers > 0, drop_last=True,
                                         worker_init_fn=ignore_stop_signals if workers else None)
    while True:
        sampler.set_epoch(epoch)
        for batch in loader:
            yield epoch, batch
        epoch += 1
