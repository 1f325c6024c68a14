"""A stop asked for by a signal: SIGTERM (how torchrun, SLURM and Kubernetes stop or preempt a job) or SIGINT
(Ctrl-C). The loop finishes its update, checkpoints and exits with ``128 + signal``; a validation under way is
abandoned at once (it is redone on resume); a second Ctrl-C stops at once, after a checkpoint being written."""
import contextlib
import signal


class StopRequested(BaseException):
    """Raised inside :meth:`StopSignals.interrupting` when a stop is asked for: the work of the block is abandoned.
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""


class StopSignals:
    """While installed (a context manager), SIGTERM and SIGINT set :attr:`signum` instead of stopping."""

    def __init__(self):
        self.signum = None
        self._saved = {}
        self._interrupting = self._shielded = self._deferred = False

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
            if self._shielded:
                self._deferred = True
                return
            raise KeyboardInterrupt
        self.signum = signum
        if self._interrupting:
            raise StopRequested

    @contextlib.contextmanager
    def interrupting(self):
        """A stop asked for inside the block raises :class:`StopRequested` at once; one asked for before it, at its
        start."""
        if self.requested:
            raise StopRequested
        self._interrupting = True
        try:
            yield
        finally:
            self._interrupting = False

    @contextlib.contextmanager
    def shielded(self):
        """A second Ctrl-C inside the block (a checkpoint being written) takes effect at its end."""
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False
        if self._deferred:
            self._deferred = False
            raise KeyboardInterrupt

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
