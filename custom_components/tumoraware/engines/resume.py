"""What a checkpoint needs beyond weights for a resumed run to repeat an uninterrupted one.

A run resumed from a checkpoint written at an epoch boundary trains on exactly the batches,
crops and noise the uninterrupted run would have used only if the data pipeline continues where
it stopped. Two objects make that state checkpointable (``state_dict`` / ``load_state_dict``):

- :class:`ResumableDataLoader`: a MONAI ``DataLoader`` that knows where it is in its current
  pass. ignite keeps one loader iterator across epochs when ``epoch_length`` is shorter than the
  loader, and the CycleGAN trainer cycles its MRI loader independently of the epochs, so a
  resumed run that simply restarted the loaders would see other batches.
- :class:`RandomStates`: the global python / numpy / torch (and CUDA) random states, and every
  random generator of the data pipeline (each MONAI ``Randomizable`` transform's ``R``, the
  samplers' and loaders' ``torch.Generator``), found by walking the loaders it is given.

Exactness holds on one process for a checkpoint taken between iterations, with
``num_workers=0`` (the bundles' CPU default) or with worker processes that are not persistent
(their CUDA default): each pass starts new workers, seeded from the random state the pass starts
with, which the checkpoint restores. ``persistent_workers=True`` keeps the workers, and the
random states of the transforms they run, from one pass to the next, out of any checkpoint's
reach: restored in a later pass than the first, the loader's random transforms differ. See
:class:`RandomStates` for distributed runs.
"""

from __future__ import annotations

import logging
import random
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader
from monai.transforms import Randomizable

__all__ = ["RandomStates", "ResumableDataLoader"]

logger = logging.getLogger(__name__)

_RNG_TYPES = (np.random.RandomState, np.random.Generator, torch.Generator, random.Random)
_LEAF_TYPES = (
    str, bytes, int, float, complex, bool, PurePath, torch.Tensor, np.ndarray, np.generic,
    torch.nn.Module, logging.Logger, type, types.ModuleType, types.FunctionType,
    types.MethodType, types.BuiltinFunctionType,
)  # fmt: skip


class _PassIterator:
    """Counts the batches one pass of a :class:`ResumableDataLoader` has yielded."""

    def __init__(self, inner: Iterator, loader: ResumableDataLoader, pass_id: int) -> None:
        self._inner, self._loader, self._pass_id = inner, loader, pass_id

    def __iter__(self) -> _PassIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self._inner)
        if self._loader._passes == self._pass_id:  # an older pass's iterator counts nothing
            self._loader._consumed += 1
        return batch

    def __len__(self) -> int:
        return len(self._inner)  # type: ignore[arg-type]


class ResumableDataLoader(DataLoader):
    """``monai.data.DataLoader`` whose position in the current pass survives a checkpoint.

    Every ``iter(loader)`` starts a pass and records what decides its order: the global torch
    random state and the states of the loader's and sampler's ``torch.Generator`` just before
    the pass, and the sampler's ``epoch`` (``DistributedSampler``). ``state_dict`` returns that
    record with the number of batches the pass has yielded. After ``load_state_dict`` the next
    ``iter(loader)`` rebuilds that pass from the record and skips the yielded batches: with
    ``num_workers=0`` it advances only the sampler (no sample is loaded or transformed, so no
    transform draws a random number), with workers it loads and drops them. The random states
    are put back afterwards, so replaying consumes nothing. Passes after it are ordinary. Worker
    processes are seeded from the restored state as well, so they repeat their random transforms,
    unless they are persistent (see the module docstring).

    Same arguments as ``monai.data.DataLoader``; a drop-in replacement in the configs.
    """

    def __init__(self, dataset: Any, num_workers: int = 0, **kwargs: Any) -> None:
        super().__init__(dataset, num_workers=num_workers, **kwargs)
        self._passes = 0
        self._consumed = 0
        self._pass_start: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None

    @property
    def resume_pending(self) -> bool:
        """True until the pass restored by :meth:`load_state_dict` has been rebuilt by ``iter``."""
        return self._pending is not None

    def __iter__(self) -> Iterator:  # type: ignore[override]
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return self._replay(pending)
        self._pass_start = self._snapshot()
        self._passes += 1
        self._consumed = 0
        return _PassIterator(super().__iter__(), self, self._passes)

    def state_dict(self) -> dict[str, Any]:
        """``{"passes", "consumed", "pass_start"}`` (``pass_start``: None before any pass)."""
        if self._pending is not None:  # restored, not iterated since: still that position
            return dict(self._pending)
        return {"passes": self._passes, "consumed": self._consumed, "pass_start": self._pass_start}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a position; the next ``iter(loader)`` continues that pass."""
        self._passes = int(state_dict["passes"])
        self._consumed = int(state_dict["consumed"])
        self._pass_start = state_dict["pass_start"]
        self._pending = dict(state_dict) if self._pass_start is not None else None

    # --------------------------------------------------------------------------------------

    def _generators(self) -> list[torch.Generator]:
        """The torch generators that order a pass: the loader's (worker seeds, default
        sampler) and a sampler's own, without repeats."""
        found: list[torch.Generator] = []
        samplers = [self.sampler, getattr(self.batch_sampler, "sampler", None)]
        for owner in (self, *samplers):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(g is not generator for g in found):
                found.append(generator)
        return found

    def _snapshot(self) -> dict[str, Any]:
        epoch = getattr(self.sampler, "epoch", None)
        return {
            "torch": torch.get_rng_state(),
            "generators": [g.get_state() for g in self._generators()],
            "sampler_epoch": epoch if isinstance(epoch, int) else None,
        }

    def _restore(self, snapshot: Mapping[str, Any]) -> None:
        torch.set_rng_state(snapshot["torch"].cpu())
        generators = self._generators()
        if len(generators) != len(snapshot["generators"]):
            raise ValueError(
                f"ResumableDataLoader: the checkpoint has {len(snapshot['generators'])} sampler "
                f"generators, this loader {len(generators)}; resume with the same configuration."
            )
        for generator, state in zip(generators, snapshot["generators"], strict=True):
            generator.set_state(state.cpu())
        if snapshot["sampler_epoch"] is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(snapshot["sampler_epoch"])

    def _replay(self, pending: Mapping[str, Any]) -> Iterator:
        now = self._snapshot()
        consumed = int(pending["consumed"])
        try:
            self._restore(pending["pass_start"])
            inner = super().__iter__()
            skip = getattr(inner, "_next_index", None)
            by_index = self.num_workers == 0 and callable(skip)
            for _ in range(consumed):
                if by_index:
                    skip()  # the sampler's next index batch (torch's private hook): nothing loaded
                else:
                    next(inner)
            if by_index and hasattr(inner, "_num_yielded"):
                inner._num_yielded += consumed
        except StopIteration as error:
            raise ValueError(
                f"ResumableDataLoader: the restored pass ends before its {consumed} yielded "
                "batches; the dataset or batch size changed since the checkpoint."
            ) from error
        finally:
            if consumed == 0:  # the sampler has not read its epoch yet: leave the pass's one
                now["sampler_epoch"] = None
            self._restore(now)
        self._passes = int(pending["passes"])
        self._consumed = consumed
        self._pass_start = pending["pass_start"]
        return _PassIterator(inner, self, self._passes)


class RandomStates:
    """Global random states and the data pipeline's random generators, as one checkpoint item.

    ``state_dict()`` holds python's ``random``, numpy's global ``RandomState``, torch's CPU
    generator, CUDA's generators (when CUDA is initialised) and, in a stable walk order, every
    generator reachable from ``sources``: each MONAI ``Randomizable``'s ``R`` (inner croppers
    of dictionary transforms included), numpy ``Generator``\\ s, ``torch.Generator``\\ s of
    samplers and loaders, ``random.Random`` instances. The walk follows object attributes and
    lists/tuples (not dicts: cached samples are not searched); it runs at every save and load,
    because MONAI's ``DataLoader`` replaces transforms' ``R`` when it seeds them.

    ``load_state_dict`` restores them all. A checkpoint whose pipeline has a different number
    (or kinds) of generators restores the global states only, with a warning. In a distributed
    run every rank loads rank 0's file: rank 0 continues exactly, the other ranks are reseeded
    from the restored state and their rank (deterministic, and distinct per rank as
    ``set_determinism(seed + rank)`` made them), not bit-identical to an uninterrupted run.

    Args:
        sources: the training loaders (or datasets, transforms) to search for generators.

    Example::

        save_dict["random_states"] = RandomStates([train_loader])
    """

    def __init__(self, sources: Sequence[Any] = ()) -> None:
        self.sources = [s for s in sources if s is not None]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _encode(np.random.get_state(legacy=True)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "generators": [_generator_state(g) for g in _find_generators(self.sources)],
        }
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        random.setstate(_as_tuple(state_dict["python"]))
        np.random.set_state(_decode(state_dict["numpy"]))
        torch.set_rng_state(state_dict["torch"].cpu())
        cuda = state_dict.get("cuda") or []
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        generators = _find_generators(self.sources)
        saved = list(state_dict.get("generators", []))
        kinds = [_kind(g) for g in generators]
        if kinds != [s["kind"] for s in saved]:
            logger.warning(
                "RandomStates: the checkpoint holds %d data-pipeline random generators, this "
                "configuration %d (or of other kinds): only the global random states are "
                "restored, so the resumed run will not repeat the uninterrupted one exactly.",
                len(saved), len(generators),
            )  # fmt: skip
        else:
            for generator, entry in zip(generators, saved, strict=True):
                _set_generator_state(generator, entry)
        rank = _rank()
        if rank > 0:
            _reseed(rank, generators)


# ------------------------------------------------------------------------------------------------
# helpers


def _find_generators(sources: Sequence[Any]) -> list[Any]:
    """Random generators reachable from ``sources``, each once, in a stable order."""
    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > 12 or isinstance(obj, _LEAF_TYPES) or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, _RNG_TYPES):
            found.append(obj)
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
            return
        attributes = getattr(obj, "__dict__", None)
        if isinstance(attributes, dict):
            for value in list(attributes.values()):
                visit(value, depth + 1)
        if isinstance(obj, Randomizable):  # an R never set on the instance is the class's
            visit(getattr(obj, "R", None), depth + 1)

    for source in sources:
        visit(source, 0)
    return found


def _kind(generator: Any) -> str:
    return type(generator).__name__


def _generator_state(generator: Any) -> dict[str, Any]:
    if isinstance(generator, torch.Generator):
        state: Any = generator.get_state()
    elif isinstance(generator, np.random.RandomState):
        state = _encode(generator.get_state(legacy=True))
    elif isinstance(generator, np.random.Generator):
        state = _encode(generator.bit_generator.state)
    else:
        state = generator.getstate()
    return {"kind": _kind(generator), "state": state}


def _set_generator_state(generator: Any, entry: Mapping[str, Any]) -> None:
    state = entry["state"]
    if isinstance(generator, torch.Generator):
        generator.set_state(state.cpu())
    elif isinstance(generator, np.random.RandomState):
        generator.set_state(_decode(state))
    elif isinstance(generator, np.random.Generator):
        generator.bit_generator.state = _decode(state)
    else:
        generator.setstate(_as_tuple(state))


def _encode(value: Any) -> Any:
    """numpy arrays and scalars as tensors and python numbers (checkpoints load weights_only)."""
    if isinstance(value, np.ndarray):
        return {
            "ndarray": torch.from_numpy(value.astype(np.int64, copy=False)),
            "dtype": str(value.dtype),
        }
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"ndarray", "dtype"}:
        return value["ndarray"].cpu().numpy().astype(value["dtype"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_decode(v) for v in value)
    return value


def _as_tuple(value: Any) -> Any:
    """python ``random`` states are nested tuples; a checkpoint may give lists back."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _reseed(rank: int, generators: list[Any]) -> None:
    """Distinct, deterministic streams for a rank > 0 that loaded rank 0's states."""
    seed = int(torch.randint(0, 2**31 - 1, ())) + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    for offset, generator in enumerate(generators, start=1):
        sub = (seed + 7919 * offset) % 2**32
        if isinstance(generator, torch.Generator):
            generator.manual_seed(sub)
        elif isinstance(generator, np.random.RandomState):
            generator.seed(sub)
        elif isinstance(generator, np.random.Generator):
            generator.bit_generator.state = type(generator.bit_generator)(sub).state
        else:
            generator.seed(sub)
