"""SIGTERM (preemption, kill) and SIGINT (Ctrl-C) as a stop request acted on at a safe point; workers
ignore them, so only the main process decides. No torch here: preprocess.py imports it."""
from __future__ import annotations

import signal
import threading


class StopRequested(Exception):
    """A SIGTERM / SIGINT in some process: the work in flight is not applied."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGTERM and SIGINT while inside. defer=True (train.py): the first is kept in `.signum` for the
    loop, a second raises KeyboardInterrupt; defer=False: either raises it at once."""

    def __init__(self, defer: bool = True):
        self.defer, self.signum, self.previous = defer, 0, {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum: int, frame) -> None:
        if self.signum or not self.defer:
            raise KeyboardInterrupt
        self.signum = signum


def ignore_stop_signals(*_, ctrl_c: bool = True) -> None:
    """In a worker: ignore SIGTERM, and SIGINT unless ctrl_c is False (preprocess drops work)."""
    if ctrl_c:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
