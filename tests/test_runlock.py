"""The run lock with real processes: a holder in another process refuses a second writer, naming its pid; a
SIGKILLed holder leaves no stale lock; a .lock that is a symlink, a hard link, a FIFO or a folder is refused and
written through by nobody."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cnnctl.errors import CnnctlError, UsageError
from cnnctl.insight.runs import STATUS_FILE
from cnnctl.training.runlock import LOCK_NAME, RunLock, holder
from tests.conftest import ROOT, error_line, snapshot

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the holder is killed with SIGKILL; POSIX only")

# Takes the lock, says so, and holds it until its stdin closes (or it is killed).
HOLD = """
import sys
from cnnctl.training.runlock import RunLock
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


@pytest.mark.slow
def test_two_trainers_on_one_run_the_second_refused_with_the_first_pid(tmp_path, tiny_config):
    run_dir = tmp_path / "runs" / "shared"
    first = subprocess.Popen([sys.executable, "-m", "cnnctl", "train", str(tiny_config), "--name", "shared", "--out",
                              str(tmp_path / "runs"), "--set", "train.epochs=500", "--set",
                              "train.early_stopping=null"], stdout=subprocess.DEVNULL,  # still training when asked
                             stderr=subprocess.PIPE, text=True)
    try:
        assert first.stderr is not None
        while line := first.stderr.readline():  # after its first epoch: last.pt exists, so a resume is possible
            if line.startswith("epoch 1/500"):
                break
        config_before = (run_dir / "config.yaml").read_text()
        second = subprocess.Popen([sys.executable, "-m", "cnnctl", "train", "--resume", str(run_dir), "--set",
                                   "train.epochs=600"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert second.stderr is not None
        said = []
        while line := second.stderr.readline():
            said.append(line)
            if line.startswith("run directory:"):  # it went on to train: stop it rather than wait for 600 epochs
                second.kill()
        second.wait()
        assert second.returncode == 2, "".join(said)
        assert f"pid {first.pid}" in said[-1] and str(run_dir) in said[-1]
        assert (run_dir / "config.yaml").read_text() == config_before, "the refused writer changed nothing"
        assert first.poll() is None, "the first trainer goes on"
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=300)
        assert first.returncode == 128 + signal.SIGINT and (run_dir / "last.pt").is_file()
        assert holder(run_dir) is None
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


# ---------------------------------------------------------------- a .lock that is no lock (issue 23, item 1)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != LOCK_NAME}


@contextlib.contextmanager
def _fails_instead_of_hanging(seconds: float):
    """A hang (an open that waits on a FIFO) becomes a TimeoutError from SIGALRM's handler, not a stuck suite."""
    def timeout(signum, frame):
        raise TimeoutError(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize(("plant", "kind"), [
    (lambda lock, outside: lock.symlink_to(outside), "a symbolic link"),
    (lambda lock, outside: os.link(outside, lock), "a file with 2 hard links"),
    (lambda lock, outside: os.mkfifo(lock), "a FIFO"),
    (lambda lock, outside: lock.mkdir(), "a directory"),
], ids=["symlink", "hard-link", "fifo", "directory"])
def test_resume_refuses_a_lock_that_is_not_a_regular_file_and_writes_through_nothing(cli, trained_run, tmp_path,
                                                                                      plant, kind):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    outside = tmp_path / "precious.txt"  # a file outside the run a shared run folder's .lock could lead to
    outside.write_bytes(b"not yours\n")
    (run_dir / LOCK_NAME).unlink()
    plant(run_dir / LOCK_NAME, outside)
    before = _snapshot(run_dir)

    with _fails_instead_of_hanging(60):
        result = cli("train", "--resume", run_dir, "--set", "train.epochs=2")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {run_dir / LOCK_NAME}: the run lock is {kind}"), result.stderr
    assert "remove it" in result.stderr or "rmdir it" in result.stderr
    assert "Traceback" not in result.output
    assert outside.read_bytes() == b"not yours\n", "the file the lock leads to keeps its bytes"
    assert _snapshot(run_dir) == before, "nothing in the run changed"
    assert not (run_dir / "status.json").exists()


def test_holder_never_opens_a_fifo_or_follows_a_link(tmp_path):
    """``cnnctl runs`` asks holder() of every run folder: a planted .lock must neither hang it nor be followed."""
    os.mkfifo(tmp_path / LOCK_NAME)
    with _fails_instead_of_hanging(10):
        assert holder(tmp_path) is None
    other, held = tmp_path / "other", tmp_path / "held"
    other.mkdir()
    held.mkdir()
    with RunLock(held):  # a held lock elsewhere, which a symlinked .lock must not report
        (other / LOCK_NAME).symlink_to(held / LOCK_NAME)
        assert holder(held) == os.getpid()
        assert holder(other) is None


# ---------------------------------------------------------------- a resume where .lock cannot be made


def test_resume_of_a_run_whose_lock_cannot_be_created(world, cli):
    """A run folder where .lock cannot be made (here: a folder holds its name) is refused before anything changes:
    a .lock that is not a regular file is foreign input in the run folder (exit 2 naming it, issue 23), not a
    failed write."""
    run = world / "lockless" / "pets"
    shutil.copytree(world / "runs" / "pets", run)
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").mkdir()
    before = snapshot(run)
    result = cli("train", "--resume", run, "--set", "train.epochs=2")
    assert result.exit_code == 2
    assert error_line(result).startswith(f"error: {run / '.lock'}: the run lock is a directory, not the regular file")
    assert "rmdir it" in result.stderr and "Traceback" not in result.output
    assert snapshot(run) == before and not (run / STATUS_FILE).exists()


def as_nobody():
    os.setgid(65534)
    os.setuid(65534)


def nobody_can_run_python() -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    try:
        return subprocess.run([sys.executable, "-c", "import torch"], preexec_fn=as_nobody, capture_output=True,
                              cwd="/", timeout=120).returncode == 0
    except OSError:
        return False


@pytest.mark.slow
def test_resume_of_a_run_in_a_read_only_folder(world, tmp_path):
    """The run folder is root's, the resume runs as nobody: the lock cannot be created, nothing changes.
    (Root writes through any chmod, so this needs root, dropping to nobody, and an interpreter nobody can run.)"""
    if not nobody_can_run_python():
        pytest.skip("needs root and a Python (with torch) that the user nobody can run")
    run = world / "ro-runs" / "pets"
    shutil.copytree(world / "runs" / "pets", run)
    for p in [run.parent, run, *run.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    (run / ".lock").unlink(missing_ok=True)
    before = snapshot(run)
    home = Path(tempfile.mkdtemp(prefix="cnnctl-nobody-"))
    home.chmod(0o777)
    try:
        proc = subprocess.run([sys.executable, "-m", "cnnctl", "train", "--resume", str(run), "--set",
                               "train.epochs=2"], capture_output=True, text=True, cwd=home, timeout=300,
                              preexec_fn=as_nobody,
                              env={**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home), "PYTHONPATH": str(ROOT),
                                   "TORCHINDUCTOR_CACHE_DIR": str(home), "XDG_CACHE_HOME": str(home)})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    line = [x for x in proc.stderr.splitlines() if x.startswith("error:")][0]
    assert line.startswith(f"error: could not write {run / '.lock'}: Permission denied"), line
    assert snapshot(run) == before
