"""A whole study in one MLflow experiment: every training and evaluation stage a run of its own
(MONAI's own ``--tracking`` handlers), tagged with its seed, method and step, plus one run that
holds Table 1.

The stages are ordinary ``python -m monai.bundle run ... --tracking SETTINGS --run_name STAGE``
commands; ``SETTINGS`` is MONAI's default MLflow settings with the study's SQLite store and
experiment name, so a stage's run is exactly what a user gets from ``--tracking mlflow`` by
hand. MONAI's handler has no tags, so the study sets them on each run once the stages are done.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tumoraware.atomic import write_json_atomic
from tumoraware.pipeline.layout import EVALUATE, TRAIN
from tumoraware.pipeline.stage import BundleStage

__all__ = ["TRACKERS", "log_table", "tag_runs", "tracked_stages", "tracking_uri"]

TRACKERS = ("mlflow",)
SETTINGS_FILE = "tracking.json"
STORE_FILE = "mlruns.db"
ARTIFACTS_DIR = "mlartifacts"
TABLE_RUN = "table1"


def check_tracking(tracking: str | None) -> str | None:
    """``tracking`` if it is one we support (or None); otherwise a clear error."""
    if tracking in (None, "", "None", "none"):
        return None
    if tracking not in TRACKERS:
        raise ValueError(
            f"--tracking {tracking!r} is not supported; choose one of {list(TRACKERS)} (or leave "
            "it out)."
        )
    try:
        import mlflow  # noqa: F401
    except ImportError as error:
        raise ValueError(
            "--tracking mlflow needs MLflow: pip install -e '.[tracking]' (mlflow-skinny, "
            "sqlalchemy, alembic)."
        ) from error
    return tracking


def tracking_uri(root: Path) -> str:
    """The study's MLflow store: SQLite in its folder (MONAI's default kind of store)."""
    return f"sqlite:///{Path(root).resolve() / STORE_FILE}"


def experiment_name(root: Path) -> str:
    return f"tumoraware_{Path(root).resolve().name}"


def tracked_stages(stages: Sequence[BundleStage], root: Path) -> list[BundleStage]:
    """``stages`` with every training and evaluation stage logging to the study's experiment."""
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    settings["configs"]["tracking_uri"] = tracking_uri(root)
    settings["configs"]["experiment_name"] = experiment_name(root)
    path = Path(root) / SETTINGS_FILE
    write_json_atomic(path, settings)
    _experiment_id(_client(root), root)  # create the store here: stages that start at once
    # would otherwise race to create its tables (SQLite "duplicate column" in the migration)
    out = []
    for stage in stages:
        if stage.address is not None and stage.address.step in (TRAIN, EVALUATE):
            run_args = {"tracking": str(path), "run_name": stage.name}
            stage = dataclasses.replace(stage, run_args=run_args)
        out.append(stage)
    return out


def _client(root: Path) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri(root))


def _experiment_id(client: Any, root: Path) -> str:
    """The study's experiment, created with its artifacts in the study folder (MLflow's default
    for a SQLite store is ``./mlruns`` in whatever folder the command runs from)."""
    experiment = client.get_experiment_by_name(experiment_name(root))
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (Path(root).resolve() / ARTIFACTS_DIR).as_uri()
    return client.create_experiment(experiment_name(root), artifact_location=artifacts)


def tag_runs(root: Path, stages: Sequence[BundleStage]) -> int:
    """Tag each stage's run with what the stage is (seed, kind, method, step, split); returns
    how many runs were tagged."""
    client = _client(root)
    experiment = _experiment_id(client, root)
    tagged = 0
    for stage in stages:
        if not stage.run_args or stage.address is None:
            continue
        address = stage.address
        tags = {
            "seed": address.seed, "kind": address.kind, "method": address.method,
            "step": address.step, "split": address.split or "", "stage": stage.name,
        }  # fmt: skip
        for run in client.search_runs([experiment], f"attributes.run_name = '{stage.name}'"):
            for key, value in tags.items():
                client.set_tag(run.info.run_id, key, str(value))
            tagged += 1
    return tagged


def log_table(root: Path, report: dict) -> str:
    """A run named ``table1`` holding every Table-1 number (``<method>/<split>/<metric>``, the
    mean over seeds) and the report files as artifacts; returns its run id."""
    client = _client(root)
    experiment = _experiment_id(client, root)
    for old in client.search_runs([experiment], f"attributes.run_name = '{TABLE_RUN}'"):
        client.delete_run(old.info.run_id)  # one Table 1 per study: the latest
    run = client.create_run(experiment, run_name=TABLE_RUN, tags={"kind": "report"})
    run_id = run.info.run_id
    for row in report.get("rows", []):
        for key, value in row.items():
            if isinstance(value, dict) and value.get("mean") is not None:
                name = f"{row['method']}/{key}".replace("/", "__")
                client.log_metric(run_id, name, float(value["mean"]))
    client.log_param(run_id, "seeds", json.dumps(report.get("seeds")))
    client.log_param(run_id, "profile", str(report.get("profile")))
    for name in ("report.md", "report.json", "table1.csv"):
        if (Path(root) / name).is_file():
            client.log_artifact(run_id, str(Path(root) / name))
    client.set_terminated(run_id)
    return run_id
