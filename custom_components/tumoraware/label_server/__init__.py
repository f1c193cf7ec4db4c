"""MONAI Label 0.8.5 serving the exported segmentation bundle, in its own environment.

- :func:`ensure_label_env`: the cached MONAI Label virtual environment (built once), by one of
  the :data:`RECIPES` (MONAI 1.5.2 pinned, the default; or MONAI 1.6.x as pip picks it).
- :func:`prepare_app`, :func:`install_bundle`: the ``monaibundle`` app with the bundle in it.
- :class:`LabelServer`: start / wait / request / stop (by PID, process group) a server.
- :func:`serve`: all of the above in the foreground (``tumoraware monailabel serve``).
"""

from tumoraware.label_server.app import check_bundle, install_bundle, prepare_app
from tumoraware.label_server.env import (
    DEFAULT_RECIPE,
    RECIPES,
    LabelEnv,
    default_cache_dir,
    ensure_label_env,
)
from tumoraware.label_server.serve import check_model_listed, serve, start_label_server
from tumoraware.label_server.server import LabelServer, LabelServerError, free_port

__all__ = [
    "DEFAULT_RECIPE",
    "RECIPES",
    "LabelEnv",
    "LabelServer",
    "LabelServerError",
    "check_bundle",
    "check_model_listed",
    "default_cache_dir",
    "ensure_label_env",
    "free_port",
    "install_bundle",
    "prepare_app",
    "serve",
    "start_label_server",
]
