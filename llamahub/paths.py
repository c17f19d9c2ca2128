"""Where llamahub keeps things on this machine: config, data and cache folders.

``LLAMAHUB_HOME`` puts all three under one folder (tests, throwaway setups); ``LLAMAHUB_CACHE``
moves the cache alone; otherwise the platform's folders (``platformdirs``). The client, the
hub's CLI and plugins (through ``llamahub.plugin``) all ask here.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "LLAMAHUB_CACHE"
HOME_ENV = "LLAMAHUB_HOME"


def _home() -> Path | None:
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else None


def config_dir() -> Path:
    home = _home()
    return home / "config" if home else Path(platformdirs.user_config_dir("llamahub"))


def data_dir() -> Path:
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir("llamahub"))


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    home = _home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir("llamahub"))
