"""Turn SIGINT (Ctrl-C), SIGTERM (pre-emption, ``scancel``, ``docker stop``) and SIGUSR1/SIGUSR2
(SLURM's warning before the time limit, ``--signal=USR1@120``; submitit uses USR2) into a stop request.

Interrupting inside ``optimizer.step()`` would leave a half-updated model; the loop
finishes the current iteration, writes ``last.pt`` and exits, so a restarted job
(``resume=auto``) continues where it stopped. A second signal aborts at once: the
last checkpoint stays intact because checkpoints are written atomically.

A handler that was installed before ours (submitit's, which pickles the job and
requeues it) is not lost: ``handoff`` calls it once the checkpoint is written.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

#: The exit status of a process killed by the signal, which schedulers and shells expect.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 138, signal.SIGUSR2: 140}
#: The signals a scheduler sends ahead of a time limit; on SLURM the job is requeued after the checkpoint.
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *REQUEUE_SIGNALS)


class StopOnSignals:
    """Context manager: ``requested`` becomes the first signal received; handlers restored on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.requested: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.requested is not None:
            raise KeyboardInterrupt(f"second {sig.name}: aborting without a new checkpoint")
        self.requested = sig
        log.warning("%s: finishing the current iteration and writing checkpoints/last.pt (again to abort)", sig.name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def handoff(self) -> Callable[[], None] | None:
        """The handler our own replaced for the received signal (e.g. submitit's requeue), bound to it.

        None when the signal had no Python handler of its own (default action, ignored,
        or Python's Ctrl-C handler): then stopping is all there is to do.
        """
        sig = self.requested
        previous = self._previous.get(sig) if sig is not None else None
        if sig is None or not callable(previous) or previous is signal.default_int_handler:
            return None
        return lambda: previous(int(sig), None)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.requested, 1) if self.requested is not None else 0
