"""Stop signals as exceptions: SIGTERM (a cluster's preemption, kill, scancel) and SIGINT (Ctrl-C)
become a request to stop that the scripts act on at a safe point, and worker processes ignore
them so that only the main process decides how to stop."""
from __future__ import annotations

import signal
import threading


class StopRequested(Exception):
    """A SIGTERM / SIGINT in some process: the work in flight is not applied."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGTERM and SIGINT while inside, as a stop request.

    defer=True (train.py): the first signal is recorded in `.signum` for the loop to act on
    before its next update; a second raises KeyboardInterrupt at once. defer=False
    (preprocess.py): either raises KeyboardInterrupt at once, as Ctrl-C does. The previous
    handlers come back on exit; outside the main thread (where Python allows no handler)
    nothing changes."""

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
    """In a worker process (a DataLoader worker, a preprocessing job): ignore SIGTERM, and SIGINT
    unless ctrl_c is False. Ctrl-C and a cluster's SIGTERM reach every process of the job; a worker
    killed by them would make the main process fail before it can stop cleanly (train.py first
    writes last.pt). The main process shuts its workers down. preprocess.py's workers keep Ctrl-C
    (ctrl_c=False): they drop the videos in flight at once, and the main process says so. Takes
    and ignores a worker id (worker_init_fn)."""
    if ctrl_c:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
