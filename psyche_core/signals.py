"""Stop a run cleanly on SIGINT / SIGTERM: finish the current step, save, exit 128 + signal."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


class StopRequest(threading.Event):
    """Set by the first signal; remembers which one (for the exit status)."""

    signum: int | None = None

    def request(self, signum: int) -> None:
        self.signum = signum
        self.set()

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def stop_on_signals(
    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM), quiet: bool = False
) -> Iterator[StopRequest]:
    """The first signal asks to stop after the current step; a second one aborts."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.request(signum)
        if not quiet:
            name = signal.Signals(signum).name
            print(f"{name}: stopping after the current step (again to abort)", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
