"""Crash-safe checkpoints: MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` with atomic files.

Why: MONAI's saver hands ignite a ``DiskSaver(atomic=False)``, and ignite's ``Checkpoint`` removes
the previous interval file *before* it writes the next one. A process killed during a save
(SIGKILL, out of memory, a node lost) then leaves a truncated ``checkpoint_epoch=N.pt`` and no
earlier one, and ``--resume`` fails on it. Here the same MONAI handlers run with
:class:`AtomicDiskSaver`: each file is written to a hidden temporary sibling, fsynced, renamed
over its name and the folder fsynced, and the files a save replaces are removed only after the
new one is complete. The file names, events and options are MONAI's, so the configs only change
``_target_``.

:class:`CheckpointSaver` also keeps what a resumed run needs to go on as if never stopped: the
best-metric record of a key-metric saver (the scores behind ``model.pt`` and the evaluator's
``best_metric`` / ``best_metric_epoch``, through :meth:`CheckpointSaver.state_dict`), and the
list of interval files it rotates, taken over from the folder when the run was resumed.
:class:`CheckpointLoader` names the file in every error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver

from tumoraware.atomic import atomic_path, fsync_folder

__all__ = [
    "AtomicDiskSaver",
    "AttributeState",
    "CheckpointLoader",
    "CheckpointSaver",
    "stateful_handlers",
]

logger = logging.getLogger(__name__)


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` whose files are complete or absent, never partial.

    ``__call__`` writes through :func:`tumoraware.atomic.atomic_path` (temporary sibling, fsync,
    ``os.replace``, folder fsync). ``remove`` only *schedules* a removal: ignite's ``Checkpoint``
    calls it before saving the file that replaces the removed one, so the removal is carried out
    after that save succeeded (and never for the name just written). Like MONAI's own saver, a
    fixed ``filename`` (``model.pt``, ``checkpoint_final.pt``) replaces ignite's generated name.
    Saves and removals happen on rank ``save_on_rank`` only, as in ``DiskSaver``.

    Args:
        dirname: the checkpoint folder (created if missing; may hold other ``.pt`` files).
        filename: a fixed file name for every save, or None for ignite's names.
        save_on_rank: the rank that writes in a distributed run.
        kwargs: passed to ``torch.save``.
    """

    def __init__(
        self,
        dirname: str | Path,
        filename: str | None = None,
        save_on_rank: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank,
            **kwargs,
        )  # fmt: skip
        self.filename = filename
        self._to_remove: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        written = self.filename or filename
        super().__call__(checkpoint, written, metadata)
        if idist.get_rank() != self.save_on_rank:
            self._to_remove.clear()
            return
        removed = False
        for name in self._to_remove:
            if name != written:
                (self.dirname / name).unlink(missing_ok=True)
                removed = True
        self._to_remove.clear()
        if removed:
            fsync_folder(self.dirname)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        with atomic_path(path, durable=True) as tmp:
            func(checkpoint, tmp, **self.kwargs)

    def remove(self, filename: str) -> None:
        self._to_remove.append(self.filename or filename)


class CheckpointSaver(_MonaiCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments and files) writing through
    :class:`AtomicDiskSaver`, with a resumable best-metric record.

    ``state_dict()`` holds, for a key-metric saver (``save_key_metric=True``), the scores of
    the files it keeps (``key_metric_saved``: ``[(score, name), ...]``) and the best metric and
    its epoch on the engine it is attached to (an evaluator: ``best_metric``,
    ``best_metric_epoch``); ``{}`` otherwise. Put the saver in the trainer's checkpoint dict and
    a resumed run compares its next validation with the best score so far, so a worse network
    never overwrites ``model.pt``. Unlike MONAI's ``key_metric_save_state``, the record lives in
    the full checkpoint, and ``model.pt`` stays a plain state_dict.

    An interval saver attached to a resumed trainer (``engine.state.iteration > 0`` at
    ``STARTED``, after ``CheckpointLoader``) takes over the newest ``n_saved`` interval files of
    the interrupted run that are not newer than the resumed epoch (iteration), so it rotates
    them as the uninterrupted run would have, instead of leaving them behind.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        name: str | None = None,
        file_prefix: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(save_dir, save_dict, name=name, file_prefix=file_prefix, **kwargs)
        for checkpoint in self._checkpoints():
            fixed = getattr(checkpoint.save_handler, "filename", None)
            checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=fixed)
        self._file_prefix = file_prefix
        self._engine: Engine | None = None
        self._restored_best: tuple[Any, int] | None = None

    def _checkpoints(self) -> list[Checkpoint]:
        found = (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint)
        return [c for c in found if c is not None]

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        self._engine = engine
        self._apply_restored_best()
        if self._interval_checkpoint is not None:
            engine.add_event_handler(Events.STARTED, self._adopt_interval_files)

    # --------------------------------------------------------------------------------------
    # best-metric record

    def state_dict(self) -> dict[str, Any]:
        """``{"key_metric_saved": [(score, name)], "best_metric", "best_metric_epoch"}`` for a
        key-metric saver (the last two when the engine tracks them), else ``{}``."""
        if self._key_metric_checkpoint is None:
            return {}
        saved = _saved_items(self._key_metric_checkpoint)
        state: dict[str, Any] = {"key_metric_saved": [(float(p), str(f)) for p, f in saved]}
        engine_state = getattr(self._engine, "state", None)
        if engine_state is not None and hasattr(engine_state, "best_metric"):
            state["best_metric"] = _plain_number(engine_state.best_metric)
            state["best_metric_epoch"] = int(engine_state.best_metric_epoch)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (an empty dict restores nothing)."""
        if not state_dict:
            return
        if self._key_metric_checkpoint is None:
            raise ValueError(
                "CheckpointSaver: the checkpoint holds a best-metric record but this saver has "
                "save_key_metric=False; save and resume with the same configuration."
            )
        saved = [(p, f) for p, f in state_dict.get("key_metric_saved", [])]
        _set_saved_items(self._key_metric_checkpoint, saved)
        if "best_metric" in state_dict:
            self._restored_best = (state_dict["best_metric"], int(state_dict["best_metric_epoch"]))
            self._apply_restored_best()

    def _apply_restored_best(self) -> None:
        if self._engine is None or self._restored_best is None:
            return
        self._engine.state.best_metric, self._engine.state.best_metric_epoch = self._restored_best
        self._restored_best = None

    # --------------------------------------------------------------------------------------
    # interval files of a resumed run

    def _adopt_interval_files(self, engine: Engine) -> None:
        checkpoint = self._interval_checkpoint
        if checkpoint is None or engine.state.iteration == 0 or checkpoint._saved:
            return
        name = next(iter(self.save_dict)) if len(self.save_dict) == 1 else "checkpoint"
        head = f"{self._file_prefix}_" if self._file_prefix else ""
        pattern = re.compile(re.escape(f"{head}{name}_{checkpoint.score_name}=") + r"(\d+)\.pt")
        current = engine.state.epoch if self.epoch_level else engine.state.iteration
        found = []
        for path in Path(self.save_dir).iterdir():
            match = pattern.fullmatch(path.name)
            if match and int(match.group(1)) <= current:
                found.append(Checkpoint.Item(int(match.group(1)), path.name))
        found.sort(key=lambda item: item.priority)
        keep = found if checkpoint.n_saved is None else found[len(found) - checkpoint.n_saved :]
        _set_saved_items(checkpoint, [(i.priority, i.filename) for i in keep])


def _saved_key(checkpoint: Checkpoint) -> str:
    """The key of ignite's ``Checkpoint.state_dict``: ``_saved`` in 0.5, ``saved`` in 0.4 (which
    MONAI 1.5 and MONAI Label 0.8.5 install)."""
    return next(k for k in checkpoint.state_dict() if k in ("_saved", "saved"))


def _saved_items(checkpoint: Checkpoint) -> list[tuple[Any, str]]:
    """The ``(priority, filename)`` pairs ignite's ``checkpoint`` keeps, in any ignite version."""
    return list(checkpoint.state_dict()[_saved_key(checkpoint)])


def _set_saved_items(checkpoint: Checkpoint, items: Sequence[tuple[Any, str]]) -> None:
    """Make ignite's ``checkpoint`` keep ``items`` (``(priority, filename)``), in any version."""
    checkpoint.load_state_dict({_saved_key(checkpoint): list(items)})


#: checkpoint items a resume can go without (with a warning that it is then not exact): what
#: checkpoints written before the bundles saved them lack
OPTIONAL_ITEMS = (
    "random_states", "loaders", "handlers", "pool_mri", "pool_ct", "best_model", "amp_scaler",
)  # fmt: skip


class CheckpointLoader(_MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` whose errors name the checkpoint file.

    An unreadable file (empty, truncated, not a checkpoint) fails before anything is loaded,
    with the file and what is wrong with it. A checkpoint without some object of ``load_dict``
    (written by an older version, or with another configuration) fails naming the missing
    items, unless all of them are in ``optional_items`` (the pools, loader positions, random
    states, handler states and best-metric record that older checkpoints do not hold): then the
    rest is loaded and a warning says the resumed run will not repeat an uninterrupted one.
    Everything else is MONAI's: ``Restored all variables from <path>`` is logged, and the
    trainer keeps the ``max_epochs`` of the running configuration.

    Args:
        load_path, load_dict, name, map_location, strict, strict_shape: as MONAI's.
        optional_items: top-level keys of ``load_dict`` a checkpoint may lack.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        *args: Any,
        optional_items: Sequence[str] = OPTIONAL_ITEMS,
        **kwargs: Any,
    ) -> None:
        super().__init__(load_path, load_dict, *args, **kwargs)
        self.optional_items = tuple(optional_items)

    def __call__(self, engine: Engine) -> None:
        from tumoraware.bundle_helpers import checkpoint_problem

        problem = checkpoint_problem(self.load_path)
        if problem is not None:
            raise RuntimeError(f"cannot resume from {self.load_path}: {problem}")
        max_epochs = engine.state.max_epochs  # a failed attempt may have loaded the trainer's
        try:
            super().__call__(engine)
            return
        except RuntimeError as error:  # load_state_dict: a network of another shape
            from tumoraware.errors import state_dict_mismatch

            explained = state_dict_mismatch(str(error), checkpoint=self.load_path)
            if explained is None:
                raise
            raise ValueError(explained) from error
        except ValueError as error:
            if "not found in" not in str(error):
                raise
            have = torch.load(self.load_path, map_location="cpu", weights_only=True)
            missing = sorted(set(self.load_dict) - set(have))
            if not missing or not set(missing) <= set(self.optional_items):
                raise ValueError(
                    f"cannot resume from {self.load_path}: it lacks {missing or str(error)} (it "
                    f"holds {sorted(have)}); it was written by an older version or with another "
                    "configuration. Resume with the configuration that wrote it, or start afresh."
                ) from error
        logger.warning(
            "resuming from %s without %s (an older checkpoint): the run continues, but not "
            "exactly as an uninterrupted one would", self.load_path, missing,
        )  # fmt: skip
        complete = self.load_dict
        self.load_dict = {k: v for k, v in complete.items() if k not in missing}
        engine.state.max_epochs = max_epochs
        try:
            super().__call__(engine)
        finally:
            self.load_dict = complete


class StateGroup:
    """Several stateful objects under one checkpoint key, as one object with ``state_dict``.

    ignite 0.5 accepts nested dicts of objects in a checkpoint, ignite 0.4 (what MONAI 1.5 and
    MONAI Label 0.8.5 install) only objects with ``state_dict``; this group saves the same
    ``{name: member.state_dict()}`` under either. Loading a state that lacks a member fails
    naming it, so an incomplete checkpoint is never taken for a complete one.

    Args:
        members: name -> object with ``state_dict`` / ``load_state_dict``.
    """

    def __init__(self, members: Mapping[str, Any]) -> None:
        self.members = dict(members)

    def state_dict(self) -> dict[str, Any]:
        return {name: member.state_dict() for name, member in self.members.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = sorted(set(self.members) - set(state))
        if missing:
            raise ValueError(
                f"checkpoint group lacks {missing} (it holds {sorted(state)}): it was written "
                "with another configuration; resume with that configuration or start afresh."
            )
        for name, member in self.members.items():
            member.load_state_dict(state[name])


class AttributeState:
    """The state of ``owner.<attribute>``, an object that does not exist yet when the config is
    parsed: MONAI's ``Trainer.run`` creates the AMP ``GradScaler`` (``trainer.scaler``) just
    before ``STARTED``, so the config cannot name it in a checkpoint dict.

    ``state_dict()`` is the attribute's ``state_dict()``, ``{}`` while it is None (no AMP);
    ``load_state_dict`` loads a non-empty state into it (at ``STARTED`` it exists).

    Args:
        owner: the object holding the attribute (the trainer).
        attribute: its name (``"scaler"``).
    """

    def __init__(self, owner: Any, attribute: str) -> None:
        self.owner, self.attribute = owner, attribute

    def state_dict(self) -> dict[str, Any]:
        value = getattr(self.owner, self.attribute, None)
        return {} if value is None else value.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        value = getattr(self.owner, self.attribute, None)
        if state_dict and value is not None:
            value.load_state_dict(state_dict)


def stateful_handlers(handlers: Sequence[Any] | None) -> dict[str, Any]:
    """The ``handlers`` with both ``state_dict`` and ``load_state_dict``, by snake-case class
    name (``TumourLossWarmup`` -> ``tumour_loss_warmup``; a repeated class gets ``_2``, ...), for
    a checkpoint dict."""
    found: dict[str, Any] = {}
    for handler in handlers or []:
        if not (callable(getattr(handler, "state_dict", None))
                and callable(getattr(handler, "load_state_dict", None))):  # fmt: skip
            continue
        base = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_",
                      type(handler).__name__).lower()  # fmt: skip
        name, n = base, 1
        while name in found:
            n += 1
            name = f"{base}_{n}"
        found[name] = handler
    return found


def _plain_number(value: Any) -> Any:
    """A python float/int for a tensor or numpy scalar (checkpoints load with weights_only)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        return value.item()
    return value
