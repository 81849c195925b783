"""The run lock with real processes: a holder in another process refuses a second writer, naming its pid; a
SIGKILLed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnctl.errors import CnnctlError, UsageError
from cnnctl.runlock import LOCK_NAME, RunLock, holder

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the holder is killed with SIGKILL; POSIX only")

# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLD = """
import sys
from cnnctl.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""


def _holder_process(run_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    assert line.strip() == "locked", proc.stderr.read() if proc.stderr else ""
    return proc


def test_second_writer_refused_with_the_holders_pid_then_free_after_sigkill(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = _holder_process(run_dir)
    try:
        assert holder(run_dir) == proc.pid
        with pytest.raises(UsageError) as refused:
            RunLock(run_dir).acquire()
        message = str(refused.value)
        assert message.startswith(f"{run_dir}: ") and f"pid {proc.pid}" in message
        assert refused.value.exit_code == 2
        assert holder(run_dir) == proc.pid, "a refused writer leaves the holder's lock and pid alone"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run_dir / LOCK_NAME).read_text().strip() == str(proc.pid), "the dead holder's pid is still in the file"
    assert holder(run_dir) is None, "the kernel dropped the dead process's lock"
    with RunLock(run_dir) as lock:
        assert lock.held and holder(run_dir) == os.getpid()
    assert holder(run_dir) is None


def test_holder_that_exits_normally_releases(tmp_path):
    proc = _holder_process(tmp_path)
    proc.communicate("", timeout=60)
    assert proc.returncode == 0
    assert holder(tmp_path) is None
    assert (tmp_path / LOCK_NAME).read_text() == "", "release clears the pid"


def test_one_process_two_locks_on_one_run_refused(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(CnnctlError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):  # released on exit, also after an error inside
        pass


def test_lock_released_when_the_body_raises(tmp_path):
    with pytest.raises(RuntimeError), RunLock(tmp_path):
        raise RuntimeError("training failed")
    assert holder(tmp_path) is None


def test_no_lock_file_means_no_holder(tmp_path):
    assert holder(tmp_path) is None
    assert holder(tmp_path / "missing") is None


def test_unwritable_run_directory_is_a_write_error(tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(CnnctlError, match="could not write") as error:
        RunLock(missing).acquire()
    assert str(missing / LOCK_NAME) in str(error.value) and error.value.exit_code == 1
