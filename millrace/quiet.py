"""Defaults that keep a command's output readable; each is only set when the user has not set it."""

from __future__ import annotations

import os
import warnings

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # models are local; never reach for a hub
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DASK_LOGGING__DISTRIBUTED": "warning",
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD_ADDRESS": "",
}


def apply() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
