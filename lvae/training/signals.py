"""A stop asked for by a signal: SIGTERM (how torchrun, SLURM and Kubernetes stop or preempt a job) or SIGINT
(Ctrl-C). The loop finishes its update, checkpoints and exits with ``128 + signal``; a second Ctrl-C stops at
once."""
import signal


class StopSignals:
    """While installed (a context manager), SIGTERM and SIGINT set :attr:`signum` instead of stopping."""

    def __init__(self):
        self.signum = None
        self._saved = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self):
        return self.signum is not None

    @property
    def exit_status(self):
        return 128 + self.signum


def ignore_stop_signals(worker_id=None):
    """A DataLoader ``worker_init_fn``: workers leave SIGTERM and SIGINT to the training process (which ends
    them), so that it can finish its update when a whole process group is signalled."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
