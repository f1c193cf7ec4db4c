"""The study's on-disk contract: where every stage of a study runs and what its ``stage.json`` says.

A study folder (``tumoraware demo`` / ``reproduce``) holds one folder per stage, one per seed::

    seed0/synthesis/<model>/{train,evaluate,infer}
    seed0/segmentation/<method>/{train,eval_<split>}
    seed0/preservation/<model>/<split>           (model "real_mri": the reader's ceiling)

and ``report.json`` (with ``report.md``, ``table1.csv`` and the figures) at its root. A training
stage keeps its weights in ``models/model.pt``. While a stage runs, ``stage.lock`` names the
processes that hold its folder and ``stage.started.json`` the hash of its unfinished run (a
killed training of that hash resumes from its ``models/`` checkpoints).

A stage's folder name is also its name in the study (:attr:`StageAddress.name`), and its
``stage.json`` (:class:`StageRecord`) records what ran as fields: bundle, config files,
overrides and the address (seed, kind, method, step, split).

This module is the only place that knows these names. Readers build paths with
:class:`StudyLayout` and read a stage's meaning from its record's fields, never from a folder
name or a command line; :meth:`StudyLayout.describe` is the inverse of the layout for a folder
without a record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tumoraware.atomic import write_json_atomic

__all__ = [
    "DEMO_STUDY",
    "EVALUATE",
    "EVALUATE_WHOLE",
    "INFER",
    "INTERRUPTED_LOG",
    "KINDS",
    "LOCK",
    "LOG",
    "MARKER",
    "MODELS_DIR",
    "PRESERVATION",
    "PRESERVE",
    "SEGMENTATION",
    "STAGE_SCHEMA",
    "STARTED",
    "STEPS",
    "SYNTHESIS",
    "TRAIN",
    "WEIGHTS_FILE",
    "StageAddress",
    "StageRecord",
    "StudyLayout",
    "read_stage_record",
    "weights_stage_dir",
    "write_stage_record",
]

SYNTHESIS, SEGMENTATION, PRESERVATION = "synthesis", "segmentation", "preservation"
KINDS = (SYNTHESIS, SEGMENTATION, PRESERVATION)
"""What a stage belongs to: a synthesis model, a Table-1 method, or a preservation score."""
TRAIN, EVALUATE, INFER, PRESERVE = "train", "evaluate", "infer", "preserve"
EVALUATE_WHOLE = "evaluate_whole"
"""A segmentation evaluated on whole volumes, no expert position given (``evaluate_whole.json``)."""
STEPS: dict[str, tuple[str, ...]] = {
    SYNTHESIS: (TRAIN, EVALUATE, INFER),
    SEGMENTATION: (TRAIN, EVALUATE, EVALUATE_WHOLE),
    PRESERVATION: (PRESERVE,),
}
"""The steps each kind has: a segmentation evaluation and a preservation score have a split."""
DEMO_STUDY = Path("runs/demo")
"""The study ``tumoraware demo`` writes by default."""
MARKER = "stage.json"
"""A finished stage's record in its folder (:class:`StageRecord`)."""
STARTED = "stage.started.json"
"""The content hash of a stage's run that started and has not finished; a re-run of the same
hash resumes from its checkpoints (a training), any other starts afresh."""
LOCK = "stage.lock"
"""Present while a process runs the stage (:class:`~tumoraware.pipeline.lock.FolderLock`)."""
LOG = "log.txt"
"""The stage's log (stdout and stderr of its bundle run)."""
INTERRUPTED_LOG = "log.interrupted.txt"
"""The log of the interrupted run a resumed training continues."""
STAGE_SCHEMA = 2
"""Version of :class:`StageRecord`; a ``stage.json`` of another version counts as not run."""
REPORT = "report.json"
MODELS_DIR = "models"
"""A training stage's checkpoint folder (its ``ckpt_dir``), relative to the stage folder."""
WEIGHTS_FILE = f"{MODELS_DIR}/model.pt"
"""A training stage's trained network (state_dict), relative to the stage folder."""
_SEED = "seed"
_EVAL = "eval_"
_WHOLE = "whole_"
_EVENTS = "runs"


@dataclass(frozen=True)
class StageAddress:
    """What a stage of the study is: ``seed``, ``kind`` (:data:`KINDS`), ``method`` (a synthesis
    model, a Table-1 method key, or the model a preservation score reads), ``step`` (``train``,
    ``evaluate``, ``infer``, ``preserve``) and ``split`` (segmentation ``evaluate`` and
    ``preserve`` only, e.g. ``mri_test``, ``ct_train``)."""

    seed: int
    kind: str
    method: str
    step: str
    split: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in STEPS or self.step not in STEPS[self.kind]:
            raise ValueError(
                f"stage address {self}: a {self.kind!r} stage has steps "
                f"{STEPS.get(self.kind, ())}; kinds are {KINDS}."
            )
        needs_split = self.step in (PRESERVE, EVALUATE_WHOLE) or (self.kind, self.step) == (
            SEGMENTATION,
            EVALUATE,
        )
        if needs_split != bool(self.split):
            raise ValueError(
                f"stage address {self}: {'needs' if needs_split else 'takes no'} split."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"stage address {self}: the seed must be an int >= 0.")
        for part in (self.method, self.split or "x"):
            if part in ("", ".", "..") or "/" in part:
                raise ValueError(f"stage address {self}: {part!r} is not a folder name.")

    @property
    def name(self) -> str:
        """The stage's name in the study, also its folder below the study root, e.g.
        ``seed0/segmentation/cyclegan/eval_mri_test``."""
        if self.step == PRESERVE:
            leaf = str(self.split)
        elif self.step == EVALUATE_WHOLE:
            leaf = f"{_WHOLE}{self.split}"
        elif self.split:
            leaf = f"{_EVAL}{self.split}"
        else:
            leaf = self.step
        return f"{_SEED}{self.seed}/{self.kind}/{self.method}/{leaf}"

    @property
    def group(self) -> str:
        """Stages that take about as long: same kind, step and split (any seed or method)."""
        return "/".join(p for p in (self.kind, self.step, self.split) if p)


@dataclass(frozen=True)
class StudyLayout:
    """Every folder and file of the study rooted at ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_report(cls, report: str | Path) -> StudyLayout:
        """The layout of the study whose ``report.json`` is ``report``."""
        return cls(Path(report).parent)

    @property
    def report(self) -> Path:
        """``report.json`` of the study."""
        return self.root / REPORT

    @property
    def slice_cache(self) -> Path:
        """On-disk slice stores shared by every stage and seed (each keyed by its content)."""
        return self.root / "slice_cache"

    def seed_dir(self, seed: int) -> Path:
        """Everything of one seed: ``seed<N>``."""
        return self.root / f"{_SEED}{seed}"

    def stage_dir(self, address: StageAddress) -> Path:
        """The folder a stage runs in: ``root / address.name``."""
        return self.root / address.name

    def train(self, seed: int, kind: str, method: str) -> Path:
        """A training stage (``kind`` synthesis or segmentation)."""
        return self.stage_dir(StageAddress(seed, kind, method, TRAIN))

    def models(self, seed: int, kind: str, method: str) -> Path:
        """The checkpoint folder of a training (its ``ckpt_dir``)."""
        return self.train(seed, kind, method) / MODELS_DIR

    def weights(self, seed: int, kind: str, method: str) -> Path:
        """The trained network's state_dict: ``.../train/models/model.pt``."""
        return self.train(seed, kind, method) / WEIGHTS_FILE

    def events(self, seed: int, kind: str, method: str) -> Path:
        """A training's ``output_dir`` (TensorBoard event files)."""
        return self.train(seed, kind, method) / _EVENTS

    def synthesis_evaluation(self, seed: int, model: str) -> Path:
        """Tumour KL and position-leak probes of a synthesis model."""
        return self.stage_dir(StageAddress(seed, SYNTHESIS, model, EVALUATE))

    def inference(self, seed: int, model: str) -> Path:
        """A synthesis model's synthetic MRI of the training CT."""
        return self.stage_dir(StageAddress(seed, SYNTHESIS, model, INFER))

    def evaluation(self, seed: int, method: str, split: str) -> Path:
        """A Table-1 method's segmentation evaluated on an MRI split."""
        return self.stage_dir(StageAddress(seed, SEGMENTATION, method, EVALUATE, split))

    def whole_evaluation(self, seed: int, method: str, split: str) -> Path:
        """A Table-1 method's segmentation of whole volumes of an MRI split (no position given)."""
        return self.stage_dir(StageAddress(seed, SEGMENTATION, method, EVALUATE_WHOLE, split))

    def preservation(self, seed: int, model: str, split: str) -> Path:
        """The reader's tumour-preservation score of ``model`` on ``split`` (``real_mri``: the
        reader on real MRI, the ceiling)."""
        return self.stage_dir(StageAddress(seed, PRESERVATION, model, PRESERVE, split))

    def stage_record(self, address: StageAddress) -> StageRecord | None:
        """The record of a finished stage of this study, or None (not run, or an old record)."""
        return read_stage_record(self.stage_dir(address))

    def describe(self, stage_dir: str | Path) -> StageAddress:
        """The stage whose folder is ``stage_dir`` (inside ``root``, or relative to it).

        Raises:
            ValueError: ``stage_dir`` is not a stage folder of this layout.
        """
        path = Path(stage_dir)
        if path.is_absolute():
            try:
                path = path.relative_to(self.root)
            except ValueError:
                raise ValueError(f"{stage_dir} is not inside the study {self.root}.") from None
        parts = PurePosixPath(path.as_posix()).parts
        error = ValueError(
            f"{stage_dir} is not a stage folder of the study (seed<N>/<kind>/<method>/<step>)."
        )
        if len(parts) != 4 or not parts[0].startswith(_SEED):
            raise error
        seed, kind, method, leaf = parts
        number = seed.removeprefix(_SEED)
        if not number.isdigit() or kind not in STEPS:
            raise error
        if kind == PRESERVATION:
            step, split = PRESERVE, leaf
        elif leaf.startswith(_EVAL):
            step, split = EVALUATE, leaf.removeprefix(_EVAL)
        elif leaf.startswith(_WHOLE):
            step, split = EVALUATE_WHOLE, leaf.removeprefix(_WHOLE)
        else:
            step, split = leaf, None
        try:
            address = StageAddress(int(number), kind, method, step, split)
        except ValueError:
            raise error from None
        if address.name != PurePosixPath(*parts).as_posix():
            raise error
        return address


def weights_stage_dir(weights: str | Path) -> Path:
    """The training stage folder that wrote ``weights`` (``.../train/models/model.pt``)."""
    path = Path(weights).resolve()
    return path.parents[len(PurePosixPath(WEIGHTS_FILE).parts) - 1]


def _jsonable(value: Any) -> Any:
    """An override value as JSON: paths as strings, containers element-wise."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class StageRecord:
    """A finished stage's ``stage.json``.

    Args:
        name: the stage's name (its folder below the study root for a study stage).
        content_hash: the hash that decides whether the stage is unchanged.
        wall_s: how long it ran.
        finished: when it finished (local time, ISO 8601).
        bundle: the bundle folder it ran.
        configs: its config files, relative to the bundle, the first the base config and the
            others overriding it.
        overrides: ``--id value`` overrides (paths as strings).
        address: what the stage is in the study; None for a stage outside a study layout.
        command: the ``python -m monai.bundle`` command line, for people to read and rerun.
    """

    name: str
    content_hash: str = ""
    wall_s: float = 0.0
    finished: str = ""
    bundle: str = ""
    configs: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    address: StageAddress | None = None
    command: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``stage.json`` content (``schema`` :data:`STAGE_SCHEMA`)."""
        address = self.address
        return {
            "schema": STAGE_SCHEMA,
            "name": self.name,
            "content_hash": self.content_hash,
            "wall_s": self.wall_s,
            "finished": self.finished,
            "bundle": self.bundle,
            "configs": list(self.configs),
            "overrides": _jsonable(dict(self.overrides)),
            "seed": address.seed if address else None,
            "kind": address.kind if address else None,
            "method": address.method if address else None,
            "step": address.step if address else None,
            "split": address.split if address else None,
            "command": list(self.command),
        }

    @classmethod
    def from_json(cls, data: Any) -> StageRecord | None:
        """The record of ``stage.json`` content, or None when it is of another schema (an older
        version wrote it) or malformed."""
        if not isinstance(data, dict) or data.get("schema") != STAGE_SCHEMA:
            return None
        try:
            address = (
                StageAddress(data["seed"], data["kind"], data["method"], data["step"],
                             data.get("split"))
                if data.get("kind") is not None
                else None
            )  # fmt: skip
            overrides = data.get("overrides", {})
            if not isinstance(overrides, dict):
                return None
            return cls(
                name=str(data["name"]),
                content_hash=str(data.get("content_hash", "")),
                wall_s=float(data.get("wall_s", 0.0)),
                finished=str(data.get("finished", "")),
                bundle=str(data.get("bundle", "")),
                configs=tuple(str(c) for c in data.get("configs", [])),
                overrides=overrides,
                address=address,
                command=tuple(str(c) for c in data.get("command", [])),
            )
        except (KeyError, TypeError, ValueError):
            return None


def read_stage_record(stage_dir: str | Path) -> StageRecord | None:
    """The :class:`StageRecord` in ``stage_dir``, or None (no record, an old one, unreadable)."""
    try:
        data = json.loads((Path(stage_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return StageRecord.from_json(data)


def write_stage_record(stage_dir: str | Path, record: StageRecord) -> Path:
    """Write ``record`` as ``stage_dir/stage.json``, atomically; returns its path."""
    path = Path(stage_dir) / MARKER
    write_json_atomic(path, record.to_json())
    return path
