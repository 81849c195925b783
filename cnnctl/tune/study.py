"""The Optuna side of ``cnnctl tune``: samplers, the pruner, storages and the study a set of processes shares.

Optuna (and SQLAlchemy behind its storages) is imported here, inside functions, so the rest of cnnctl works
without it.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from cnnctl.config import short_repr
from cnnctl.errors import ConfigError, UsageError, first_line
from cnnctl.tune.space import Param

METHODS = ("grid", "random", "tpe")
# MedianPruner: a trial stops at an epoch when its value there is worse than the median of the completed trials'
# values at the same epoch. Nothing is pruned before 2 trials have completed (the "median" of one run is that run),
# nor before the end of a trial's 2nd epoch: the first epoch of a small CNN ranks runs poorly.
PRUNER = {"n_startup_trials": 2, "n_warmup_steps": 2}  # steps are the 1-based epochs of metrics.csv
# A trial whose process died (a killed worker, a lost node) is marked failed once its heartbeat is this old, so it
# does not count as running for ever (RDB storages only).
HEARTBEAT = {"heartbeat_interval": 60, "grace_period": 180}
# What to pip install for each SQLAlchemy driver. SQLAlchemy 2.1 opens a bare postgresql:// with psycopg (3),
# 2.0 with psycopg2: the driver is read from the URL's dialect, so the advice follows the installed SQLAlchemy.
DRIVERS = {
    "psycopg": "pip install 'cnnctl[postgres]' (the psycopg[binary] package)",
    "psycopg2": "pip install psycopg2-binary",
    "pg8000": "pip install pg8000",
    "asyncpg": "pip install asyncpg (optuna needs a synchronous driver: prefer postgresql+psycopg://)",
    "pymysql": "pip install pymysql",
    "mysqldb": "pip install mysqlclient",
}
STORAGE_FORMS = "Give sqlite:///path.db, postgresql://user:pass@host/db or mysql+pymysql://user:pass@host/db"


def import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UsageError("optuna is not installed: pip install 'cnnctl[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def mask(url: str | None) -> str | None:
    """A storage URL with its password hidden, for messages and study.json."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url) if url else url


def missing_driver(url: str) -> str:
    """The sentence for a storage URL whose database driver is not installed, naming the package to install."""
    try:
        import sqlalchemy
        from sqlalchemy.engine import make_url

        dialect = make_url(url).get_dialect()
        driver, version = dialect.driver, sqlalchemy.__version__
    except Exception:  # an unknown dialect or a URL SQLAlchemy cannot parse: the general advice
        return ("install the database driver (pip install 'cnnctl[postgres]' for postgresql://, pymysql for "
                "mysql+pymysql://)")
    scheme = url.partition("://")[0]
    how = DRIVERS.get(driver, f"pip install the {driver} package")
    return f"SQLAlchemy {version} opens {scheme}:// with the {driver} driver, which is not installed: {how}"


def open_storage(optuna: Any, url: str) -> Any:
    """An RDB storage with heartbeats; concurrent first opens of one SQLite file may race, so retry a little."""
    import warnings

    last: Exception | None = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # heartbeat_interval is marked experimental
                return optuna.storages.RDBStorage(url, **HEARTBEAT)
        except ImportError:  # optuna's own message names no package; say which one
            raise ConfigError(f"--storage {mask(url)}: {missing_driver(url)}") from None
        except Exception as e:  # sqlalchemy's errors: a bad URL, an unreachable server, a locked file
            last = e
            time.sleep(0.2 * (attempt + 1))
    first = first_line(last) if last else "unknown error"
    raise ConfigError(f"--storage {mask(url)}: cannot open it ({first[:200]}). {STORAGE_FORMS}")


def check_storage(url: str) -> None:
    """Refuse a storage URL that cannot work before the config is read or a trial runs (opening it would fail only
    after retries): one SQLAlchemy cannot parse, or a SQLite file whose folder does not exist."""
    try:
        from sqlalchemy.engine import make_url
    except ImportError:  # no SQLAlchemy, so no optuna: import_optuna says what to install
        return
    try:
        parsed = make_url(url)
    except Exception:  # ArgumentError, or a ValueError from a malformed port
        raise ConfigError(f"--storage {short_repr(mask(url))}: not a database URL. {STORAGE_FORMS}") from None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        folder = Path(database).parent
        if not folder.is_dir():
            raise ConfigError(f"--storage {short_repr(mask(url))}: the folder {folder} does not exist (SQLite creates "
                              "the file, not its folder); create it or give another path")


def make_pruner(optuna: Any, prune: bool) -> Any:
    return optuna.pruners.MedianPruner(**PRUNER) if prune else optuna.pruners.NopPruner()


def make_sampler(optuna: Any, method: str, params: list[Param], seed: int, shared: bool) -> Any:
    if method == "grid":
        # Every process must shuffle the grid alike: optuna maps trial numbers to grid points through the shuffle.
        return optuna.samplers.GridSampler({p.key: list(p.choices) for p in params}, seed=seed)
    if shared:
        # Processes sharing a study with one seed would propose the same points; each mixes in its process id.
        seed = (seed * 1_000_003 + os.getpid()) % 2**32
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(optuna: Any, storage: str | None, name: str, *, sampler: Any, pruner: Any, direction: str,
               identity: dict[str, Any]) -> Any:
    """Create the study, or join it when another process (or an earlier run) has made it with the same metric and
    space."""
    try:
        study = optuna.create_study(storage=open_storage(optuna, storage) if storage else None, sampler=sampler,
                                    pruner=pruner, study_name=name, direction=direction, load_if_exists=True)
    except ValueError as e:
        raise UsageError(f"--study {name}: {e}") from None
    known = study.user_attrs.get("cnnctl")
    if known is None:
        study.set_user_attr("cnnctl", identity)
    elif known != identity or study.direction.name.lower() != direction:
        raise UsageError(f"--study {name} in {mask(storage)} was started with --metric {known.get('metric')} and the "
                         f"space {json.dumps(known.get('space'))}; the processes of a study share one metric and "
                         "space. Use the same ones, or another --study")
    if "cnnctl_uid" not in study.user_attrs:  # tells this study's files from those of a study since deleted
        study.set_user_attr("cnnctl_uid", uuid.uuid4().hex)
    return study

