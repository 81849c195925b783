"""``cnnctl tune --storage postgresql://...``: the driver SQLAlchemy picks for a bare ``postgresql://`` is named when
it is missing, and two processes share one study on a real, throwaway PostgreSQL server (initdb + pg_ctl in a
temporary folder on a free local port, stopped at the end; skipped where no server binary exists)."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_config

pytest.importorskip("optuna")
sqlalchemy_url = pytest.importorskip("sqlalchemy.engine").make_url

TINY = """\
name: tiny
seed: 0
data: {dataset: digits, batch_size: 128}
model: {arch: lenet5}
optimizer: {name: adam, lr: 0.003}
train: {epochs: 1, early_stopping: null, threads: 1}
"""


def driver_of(url: str) -> str:
    return sqlalchemy_url(url).get_dialect().driver


@pytest.mark.parametrize(("url", "advice"), [
    # SQLAlchemy 2.1 opens a bare postgresql:// with psycopg (3), 2.0 with psycopg2: the advice follows the driver
    ("postgresql://user@127.0.0.1:1/optuna", None),
    ("postgresql+psycopg2://user@127.0.0.1:1/optuna", "pip install psycopg2-binary"),
    ("postgresql+psycopg://user@127.0.0.1:1/optuna", "pip install 'cnnctl[postgres]'"),
])
def test_missing_driver_names_the_package_to_install(cli, tmp_path, monkeypatch, url, advice):
    from cnnctl.tune.study import DRIVERS

    driver = driver_of(url)
    advice = advice or DRIVERS[driver]
    monkeypatch.setitem(sys.modules, driver, None)  # import of the driver now raises ImportError
    base = write_config(tmp_path / "tiny.yaml", TINY)
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: [0.001, 0.01]\n")
    result = cli("tune", base, "--space", space, "--storage", url, "--study", "s", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    scheme = url.partition("://")[0]
    assert f"opens {scheme}:// with the {driver} driver, which is not installed: {advice}" in result.stderr
    assert "Traceback" not in result.output


def test_bare_postgresql_url_uses_the_driver_the_postgres_extra_installs():
    """pyproject's [postgres] extra holds the package of the driver the installed SQLAlchemy picks."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["postgres"]
    driver = driver_of("postgresql://u@h/db")
    package = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary"}[driver]
    assert any(req.startswith(package) for req in extra), (driver, extra)


def _server_bin() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields a bare ``postgresql://`` URL to its ``postgres`` database."""
    bin_dir = _server_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    pytest.importorskip(driver_of("postgresql://u@h/db"), reason="the driver of the [postgres] extra is not installed")
    # initdb refuses to run as root; as root, the server runs as an unprivileged account
    as_user: dict[str, int] = {}
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid}
            break
        else:
            pytest.skip("running as root with no 'postgres' or 'nobody' account to run the server as")
    folder = Path(tempfile.mkdtemp(prefix="cnnctl-pg-"))  # short: the socket path must fit in 107 bytes
    data, port = folder / "data", _free_port()
    if as_user:
        os.chown(folder, as_user["user"], as_user["group"])

    def run(*args: str) -> None:
        proc = subprocess.run([str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, timeout=120,
                              cwd=folder, extra_groups=[] if as_user else None, **as_user)
        assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"

    try:
        run("initdb", "-D", str(data), "-U", "cnnctl", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
        run("pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
            "-o", f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off", "start")
        try:
            yield f"postgresql://cnnctl@127.0.0.1:{port}/postgres"
        finally:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_one_study_on_postgresql(postgres, tmp_path):
    base = write_config(tmp_path / "tiny.yaml", TINY)
    space = write_config(tmp_path / "space.yaml", "optimizer.lr: {loguniform: [1.0e-3, 1.0e-2]}\n")
    args = [sys.executable, "-m", "cnnctl", "tune", str(base), "--space", str(space), "--method", "random",
            "--trials", "6", "--storage", postgres, "--study", "pg", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores: one thread each
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    import optuna

    trials = optuna.load_study(study_name="pg", storage=postgres).get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4, 5]  # the study's total, none run twice
    assert all(t.state.name == "COMPLETE" for t in trials)
    dirs = sorted((tmp_path / "out" / "pg").glob("trial-*"))
    assert [json.loads((d / "summary.json").read_text())["trial"] for d in dirs] == [0, 1, 2, 3, 4, 5]
    assert len({t.params["optimizer.lr"] for t in trials}) == 6  # the processes' samplers are seeded apart
    # between them the processes ran every trial once (which ran how many depends on who started first)
    ran = [[int(line.split()[1].rstrip(":")) for line in err.splitlines() if line.startswith("trial ") and "->" in line]
           for _, err in outputs]
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3, 4, 5], outputs
    assert "postgresql://cnnctl@127.0.0.1" in json.loads((tmp_path / "out" / "pg" / "study.json").read_text())["storage"]
