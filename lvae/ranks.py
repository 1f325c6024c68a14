"""Where this process sits among torchrun's processes (RANK, LOCAL_RANK, WORLD_SIZE, the elastic restarts) and the
process group they join: the one reading of torchrun's environment, for training (lvae.training.distributed) and
a spread evaluation (lvae.evaluation.shards) alike."""
import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass
class Ranks:
    """This process among ``world`` processes. Under torchrun, ``restarts`` counts the elastic restarts of the
    worker group so far and ``run_id`` is the rendezvous id (the same across restarts)."""
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    restarts: int = 0
    run_id: str = None

    @classmethod
    def from_env(cls):
        env = os.environ
        elastic = {'restarts': int(env.get('TORCHELASTIC_RESTART_COUNT', '0')),
                   'run_id': env.get('TORCHELASTIC_RUN_ID')}
        if 'RANK' in env and int(env.get('WORLD_SIZE', '1')) > 1:
            return cls(int(env['RANK']), int(env['LOCAL_RANK']), int(env['WORLD_SIZE']), **elastic)
        return cls(**elastic)

    @property
    def ddp(self):
        return self.world > 1

    @property
    def master(self):
        return self.rank == 0

    def join(self, backend, timeout):
        """Join the process group of torchrun's rendezvous (``env://``) with ``backend`` and ``timeout``."""
        # torchrun's store outlives a restart of the workers: keys under a prefix of their own, or the restarted
        # group would read the addresses of the dead one
        store, rank, world = next(dist.rendezvous('env://', timeout=timeout))
        dist.init_process_group(backend, timeout=timeout, rank=rank, world_size=world,
                                store=dist.PrefixStore(f'lvae/restart_{self.restarts}', store))
