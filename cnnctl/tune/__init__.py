"""``cnnctl tune``: hyper-parameter search with Optuna."""

from cnnctl.tune.search import *  # noqa: F401,F403
from cnnctl.tune.search import _yaml_value, run_tune  # noqa: F401
