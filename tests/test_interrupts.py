"""``interrupts.stop_on_signal``: a signal is noted where it arrives and raised by ``check()`` between steps, so one that
arrives inside a finalizer is not lost (visualize's SIGINT that exited 0; the subprocess test is in test_visualize)."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from cnnctl.errors import Interrupted
from cnnctl.interrupts import check, stop_on_signal


class SignalsWhenDropped:
    """Sends ``sig`` to this process from ``__del__``, as a Ctrl-C lands in whatever finalizer is running."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def __del__(self) -> None:
        os.kill(os.getpid(), self.sig)


@pytest.fixture
def unraisable(monkeypatch) -> list:
    """What Python prints as "Exception ignored in ...": exceptions raised where they cannot propagate."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_type))
    return seen


def test_without_the_guard_a_sigint_in_a_finalizer_is_swallowed(unraisable):
    try:
        SignalsWhenDropped(signal.SIGINT)  # dropped at once: its __del__ runs here
    except KeyboardInterrupt:  # caught here, or pytest would take it for the user's Ctrl-C and stop
        pytest.fail("the KeyboardInterrupt reached the caller: this Python raised it after the finalizer")
    assert unraisable == [KeyboardInterrupt]  # printed and lost: the program goes on


def test_a_sigint_in_a_finalizer_is_raised_by_the_next_check(unraisable):
    with pytest.raises(Interrupted) as info, stop_on_signal():
        SignalsWhenDropped(signal.SIGINT)
        assert unraisable == []
        check()
        pytest.fail("check() did not raise")
    assert info.value.exit_code == 130 and str(info.value) == "interrupted by SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_during_the_last_step_is_raised_when_the_block_ends():
    with pytest.raises(Interrupted) as info, stop_on_signal():
        check()  # nothing yet: a no-op
        os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.exit_code == 143 and str(info.value) == "interrupted by SIGTERM"
    check()  # outside the block: a no-op, nothing left over
