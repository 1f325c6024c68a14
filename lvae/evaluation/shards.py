"""An evaluation spread over processes (torchrun) or jobs (``--shard K/N``, e.g. a SLURM array): each part takes a
contiguous block of the test set's images and journals their figures (lvae.evaluation.journal); the result is made
from the journals. Every figure is seeded by image and lambda and every refined item stops on its own, so the
numbers are those of one process, however the work was split (docs/evaluation.md, "Spreading an evaluation")."""
import re
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

# How long the ranks that finished wait at the end for the others: a part may take hours more than another
GATHER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Part:
    """Part ``index`` (from 0) of ``count``: the images of :meth:`block`."""
    index: int
    count: int

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f'a part is K/N with 1 <= K <= N, got {self.index + 1}/{self.count}')

    def block(self, n):
        """The indices of this part's images among ``n``: contiguous blocks whose sizes differ by one at most (the
        first ``n % count`` one longer), none padded or repeated; a part may have none."""
        size, extra = divmod(n, self.count)
        start = self.index * size + min(self.index, extra)
        return range(start, start + size + (self.index < extra))

    @property
    def label(self):
        return f'{self.index + 1}/{self.count}'

    @property
    def suffix(self):
        """What the names of this part's journal and lock end with."""
        return f'-{self.index + 1}-of-{self.count}'


def parse_shard(text):
    """``--shard K/N`` (1 <= K <= N) as a :class:`Part`; a ValueError naming the flag otherwise."""
    match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f'--shard takes K/N with 1 <= K <= N (the K-th of N parts), got {text!r}')
    return Part(int(match[1]) - 1, int(match[2]))


def gather(ranks, figures):
    """Every rank's ``figures`` (a dict image index -> journal entry) merged, on rank 0 (None on the others). The one
    collective call of a spread evaluation, made once a rank's images are done: the first ranks to finish wait for
    the others up to :data:`GATHER_TIMEOUT` (a CPU group: nothing held on a GPU meanwhile)."""
    ranks.join('gloo', GATHER_TIMEOUT)
    parts = [None] * ranks.world
    dist.all_gather_object(parts, figures)
    return {index: entry for part in parts for index, entry in part.items()} if ranks.master else None


def agree(ranks, ok):
    """Whether ``ok`` holds on every rank (after :func:`gather`); the process group is left."""
    flags = [None] * ranks.world
    dist.all_gather_object(flags, bool(ok))
    dist.destroy_process_group()
    return all(flags)


def part_done(part, done, journal, n):
    """What a shard says when its images are done (``done``: :func:`~lvae.evaluation.evaluate_bound`'s answer for
    ``part``, of ``n`` images): where they are and what is left."""
    held = len(journal.held())
    left = f' (it evaluates the {n - held} left)' if held < n else ''
    return (f'part {part.label}: its {len(done["figures"])} images are in {journal.path}; the journals hold {held} '
            f'of the {n} images: the same command without --shard writes the result{left}')
