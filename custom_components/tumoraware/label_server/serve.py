"""``tumoraware monailabel serve``: environment, app, bundle and server in one command."""

from __future__ import annotations

import ipaddress
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from tumoraware.label_server.app import check_bundle, install_bundle, prepare_app
from tumoraware.label_server.env import (
    DEFAULT_RECIPE,
    LabelEnv,
    default_cache_dir,
    ensure_label_env,
    recipe_named,
)
from tumoraware.label_server.server import LabelServer, LabelServerError

__all__ = ["check_model_listed", "exposure_warning", "serve", "start_label_server"]


def check_model_listed(info: dict[str, Any], name: str, server: LabelServer) -> dict[str, Any]:
    """``info["models"][name]``; a clear error with the server log when MONAI Label skipped it
    (it logs and drops a bundle whose configs fail to load, rather than exiting)."""
    models = info.get("models", {})
    if name not in models:
        raise LabelServerError(
            f"MONAI Label is up but does not list the model {name!r} (it lists "
            f"{sorted(models)}); it could not load the bundle. Server log tail:\n"
            f"{server.log_tail()}"
        )
    return models[name]


def start_label_server(
    bundle: str | os.PathLike,
    studies: str | os.PathLike,
    app_dir: str | os.PathLike,
    port: int,
    host: str = "127.0.0.1",
    cache_dir: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
    env_vars: dict[str, str] | None = None,
    recipe: str = DEFAULT_RECIPE,
) -> tuple[LabelServer, str]:
    """Prepare environment (``recipe``: see :data:`~tumoraware.label_server.env.RECIPES`), app
    and bundle, and return the (not yet started) server and the model name. Use the server as a
    context manager so it is always stopped."""
    recipe_named(recipe)  # fail on a wrong name, and
    name = check_bundle(bundle)  # on a wrong bundle, before minutes of installing
    env: LabelEnv = ensure_label_env(cache_dir, recipe=recipe)
    app = prepare_app(env, app_dir)
    install_bundle(app, bundle)
    Path(studies).mkdir(parents=True, exist_ok=True)
    server = LabelServer(env, app, Path(studies).resolve(), name, host=host, port=port,
                         log_file=log_file, env_vars=env_vars)  # fmt: skip
    return server, name


def exposure_warning(host: str) -> str | None:
    """The warning to print when ``host`` is not loopback: MONAI Label has no authentication, so
    anyone who can reach the port can read the studies, run inference and start training."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"WARNING: MONAI Label will listen on {host!r}, reachable from other machines, and it has "
        "no authentication: anyone who can reach this port can download every image and label "
        "in the studies folder, run the model and start training that replaces its weights. "
        "Serve on 127.0.0.1 (the default) and tunnel (ssh -L 8000:127.0.0.1:8000 HOST), or put "
        "an authenticating reverse proxy in front. See docs/security.md."
    )


def serve(
    bundle: str | os.PathLike,
    studies: str | os.PathLike,
    port: int = 8000,
    host: str = "127.0.0.1",
    app_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    ready_timeout_s: float = 300.0,
    recipe: str = DEFAULT_RECIPE,
) -> None:
    """Run MONAI Label with ``bundle`` on ``studies`` in the foreground until Ctrl-C.

    The app defaults to ``<cache>/apps/monaibundle``; the bundle is copied to
    ``<app>/model/<name>`` (weights trained through MONAI Label are saved there). ``recipe``
    picks the MONAI Label environment (``monai15``, the default, or ``monai16``).
    """
    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    app = Path(app_dir) if app_dir else cache / "apps" / "monaibundle"
    server, name = start_label_server(bundle, studies, app, port, host, cache_dir, recipe=recipe)
    print(f"monailabel: app {app}, bundle {app / 'model' / name}, studies {server.studies}")
    print(f"monailabel: {shlex.join(server.command())}", flush=True)
    try:
        with server:  # stopped by its PID however this block ends
            info = server.wait_ready(ready_timeout_s)
            model = check_model_listed(info, name, server)
            labels = ", ".join(model.get("labels", {}))
            print(f"monailabel: ready at {server.url} — model {name} (labels: {labels}; "
                  f"{model.get('dimension')}D). Ctrl-C stops it.", flush=True)  # fmt: skip
            assert server.process is not None
            code = server.process.wait()
    except KeyboardInterrupt:
        print("\nmonailabel: stopped", flush=True)
        return
    raise LabelServerError(f"MONAI Label exited with code {code}. Log tail:\n{server.log_tail()}")
