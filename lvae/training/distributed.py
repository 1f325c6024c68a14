"""The training processes: where this one sits (torchrun's RANK / LOCAL_RANK / WORLD_SIZE), its device, the
process group, and the few things the processes agree on (a run folder, a stop, RNG states)."""
from datetime import timedelta

import torch
import torch.distributed as dist

from lvae.accel.memory import reuse_freed_memory
from lvae.ranks import Ranks


class Processes(Ranks):
    """The training processes (:class:`lvae.ranks.Ranks`), their device and the few things they agree on."""
    _host = None  # the gloo group of `any` under NCCL (None: the default group)

    def init(self, device='auto'):
        """This process's device (``cuda:<local rank>`` under torchrun for 'cuda' / 'auto'), its backend flags,
        and the process group (NCCL on GPUs, gloo on CPU; a gloo group on the side for host-side agreement)."""
        want = device if device != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
        device = torch.device(f'cuda:{self.local_rank}' if want.startswith('cuda') and ':' not in want else want)
        if device.type == 'cuda':
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True  # fixed crop size: autotune the convolutions once
        else:
            reuse_freed_memory()  # no page faults for every activation (lvae.accel.memory)
        if self.ddp:
            self.join('nccl' if device.type == 'cuda' else 'gloo', timedelta(minutes=60))
            self._host = dist.new_group(backend='gloo') if device.type == 'cuda' else None
        return device

    def barrier(self):
        if self.ddp:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.ddp:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_master(self, fn):
        """``fn()`` run on rank 0: its result on every rank, or on every rank the ValueError / OSError it raised."""
        result, error = None, None
        if self.master:
            try:
                result = fn()
            except (ValueError, OSError) as e:
                error = e
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result

    def on_master(self, fn):
        """``fn()`` run on rank 0 alone: its result there (None on the other ranks, which need not hold it), and on
        every rank the ValueError / OSError it raised."""
        held = []
        self.from_master(lambda: held.append(fn()))
        return held[0] if held else None

    def gather(self, obj):
        """Every rank's ``obj``, as a list in rank order."""
        if not self.ddp:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag):
        """Whether ``flag`` is true on any rank: an all-reduce on the host, which never waits for a GPU."""
        if not self.ddp:
            return bool(flag)
        t = torch.tensor([int(bool(flag))])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._host)
        return bool(t)

    def close(self):
        if self.ddp and dist.is_initialized():
            dist.destroy_process_group()
