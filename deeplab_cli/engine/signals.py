"""Turn SIGINT (Ctrl-C) and SIGTERM (pre-emption, ``scancel``, ``docker stop``) into a stop request.

Interrupting inside ``optimizer.step()`` would leave a half-updated model; the loop
finishes the current iteration, writes ``last.pt`` and exits, so a restarted job
(``resume=auto``) continues where it stopped. A second signal aborts at once: the
last checkpoint stays intact because checkpoints are written atomically.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("deeplab_cli.train")

#: The exit status of a process killed by the signal, which schedulers and shells expect.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class StopOnSignals:
    """Context manager: ``requested`` becomes the first signal received; handlers restored on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
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

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.requested, 1) if self.requested is not None else 0
