"""util/signals.py: SIGTERM / SIGINT as a stop request, and workers that ignore them."""
import os
import signal

import pytest

from util.signals import StopSignals, ignore_stop_signals


@pytest.fixture
def handlers():
    """The test process's own handlers, back after the test."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield saved
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_deferred_first_signal_is_recorded_and_a_second_aborts(handlers):
    with StopSignals(defer=True) as stop:
        assert stop.signum == 0
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # recorded for the loop, nothing raised
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the previous handlers are back


def test_undeferred_signal_raises_at_once(handlers):
    with StopSignals(defer=False):
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_a_worker_ignores_stop_signals(handlers):
    ignore_stop_signals(3)  # as a worker_init_fn, with a worker id
    assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)  # ignored: the test goes on
