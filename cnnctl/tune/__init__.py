"""``cnnctl tune``: hyper-parameter search with Optuna (grid, random, TPE), median pruning, studies shared by
several processes through a storage URL, and the ensemble of the best trials.

- ``space``: the search-space language (pydantic models) and its checks against the config and the networks
- ``study``: Optuna samplers, the pruner, storages, joining a shared study
- ``search``: ``run_tune``, the orchestration and the objective (each trial an ordinary run)
- ``report``: the trials table, trials.csv, history.png, importances, best.yaml, the ensemble

Optuna is imported inside functions only, so the rest of cnnctl works without it.
"""

from cnnctl.tune.search import run_tune
from cnnctl.tune.space import Param, load_space, resolve_space_path

__all__ = ["Param", "load_space", "resolve_space_path", "run_tune"]
