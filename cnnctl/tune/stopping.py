"""A search stopped by SIGINT/SIGTERM: the signal noted between trials, the interrupted trial queued to run again,
an in-memory study saved to a file, and the command that resumes it."""

from __future__ import annotations

import logging
import shlex
import signal
from pathlib import Path
from typing import Any

from cnnctl.errors import Interrupted, WriteError, first_line
from cnnctl.interrupts import install_handlers, restore_handlers, second_signal
from cnnctl.tune.study import mask

log = logging.getLogger("cnnctl.tune")


class StopSignal:
    """SIGINT/SIGTERM while the trials run: the first stops the search, a second quits at once (as in training).

    The handler only notes the signal, so no optuna or storage call is cut short: no trial starts after it, and a
    trial being set up is stopped at its first step (``_Pruning``). Inside training the engine's ``Interruption``
    hook holds the signals itself: it saves last.pt after the current step and ``train`` raises ``Interrupted``.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        self._previous = install_handlers(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        restore_handlers(self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: leave now
            second_signal(signum)
            return
        self.signum = signum
        log.warning("%s received: stopping the search and saving the study (press Ctrl-C again to quit at once)",
                    signal.Signals(signum).name)

    def after_trial(self, study: Any, trial: Any) -> None:
        """An optuna callback: no trial starts after a signal."""
        if self.signum is not None:
            study.stop()


def queue_retry(optuna: Any, study: Any, number: int) -> None:
    """Queue interrupted trial ``number`` to run first when the search resumes, with the same values (and grid
    point: its system attributes go with it, as optuna's RetryFailedTrialCallback does)."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={**trial.system_attrs, "cnnctl_retry_of": number}))


def save_in_memory(optuna: Any, study: Any, study_dir: Path) -> str:
    """Copy an in-memory study to STUDY_DIR/study.db, named as its folder, so the search can be resumed; its URL."""
    db = study_dir / "study.db"
    url = f"sqlite:///{db}"
    try:
        copy = optuna.create_study(storage=url, study_name=study_dir.name, direction=study.direction)
        for key, value in study.user_attrs.items():
            copy.set_user_attr(key, value)
        copy.add_trials(study.get_trials(deepcopy=False))
    except Exception as e:  # sqlalchemy's errors: a full disk, a folder made read-only meanwhile
        raise WriteError(str(db), first_line(e)) from None
    return url


def interrupted_error(optuna: Any, study: Any, signum: int, trial: int | None, storage: str | None, study_dir: Path,
                 command: list[str]) -> Interrupted:
    """The study saved for a resume (the interrupted trial queued again, an in-memory study written to a SQLite
    file) and the error that says how to resume it; a study that cannot be saved is said so, still 128 + signal."""
    if trial is not None:
        queue_retry(optuna, study, trial)
    try:
        url = storage or save_in_memory(optuna, study, study_dir)
    except WriteError as e:
        log.warning("%s; the search cannot be resumed, only run again", e)
        return Interrupted(signum)
    name = study_dir.name if storage is None else study.study_name
    words = [*command, "--storage", mask(url) or url, "--study", name]
    saved = f"the study is saved in {mask(url)}"
    if trial is not None:
        saved += f"; trial {trial} is marked interrupted and runs again first"
    if mask(url) != url:
        saved += " (put the storage's password back in the command)"
    return Interrupted(signum, shlex.join(words), saved=saved)


def tune_command(config: str, space: str, overrides: list[str] | None, flags: dict[str, Any]) -> list[str]:
    """``cnnctl tune`` with the arguments given (``flags``: None and False left out, True a bare flag)."""
    words = ["cnnctl", "tune", config, "--space", space]
    for override in overrides or []:
        words += ["--set", override]
    for flag, value in flags.items():
        if value is not None and value is not False:
            words += [flag] if value is True else [flag, str(value)]
    return words
