"""Reading an evaluator's output case by case, shared by the report writers.

A ``SupervisedEvaluator`` with ``decollate=True`` leaves a list of per-case dicts in
``engine.state.output``; these helpers take the cases out (:func:`output_cases`), read one key
with a fix-it error (:func:`case_item`), find the source file (:func:`case_source`) and name
the cases uniquely in iteration order (:class:`CaseNamer`), so that every writer names the same
case the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import decollate_batch

from tumoraware.data.names import case_name

__all__ = ["CaseNamer", "case_item", "case_source", "output_cases"]


class CaseNamer:
    """Unique case names in iteration order: ``a``, ``a_1``, ``a_2``; ``case0003`` for none."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seen: set[str] = set()
        self.count = 0

    def __call__(self, source: Any) -> str:
        base = case_name(source) or f"case{self.count:04d}"
        name, i = base, 0
        while name in self.seen:
            i += 1
            name = f"{base}_{i}"
        self.seen.add(name)
        self.count += 1
        return name


def output_cases(output: Any) -> list[Mapping[str, Any]]:
    """Per-case dicts from an evaluator output: a decollated list, or one batch dict."""
    if isinstance(output, Mapping):
        return list(decollate_batch(output))
    if isinstance(output, (list, tuple)) and all(isinstance(c, Mapping) for c in output):
        return list(output)
    raise ValueError(
        "engine.state.output: expected a list of per-case dicts (SupervisedEvaluator with "
        f"decollate=True) or a batch dict, got {type(output).__name__}. Fix: attach this "
        "handler to an evaluator whose output holds the image, pred and label."
    )


def case_item(case: Mapping[str, Any], key: str, handler: str) -> Any:
    """``case[key]``; a missing key raises a ``KeyError`` naming ``handler`` and the keys there."""
    if key not in case:
        raise KeyError(
            f"{handler}: expected key {key!r} in each case of engine.state.output, got keys "
            f"{sorted(map(str, case))}. Fix: pass the evaluator's key names (image_key, "
            "pred_key, label_key)."
        )
    return case[key]


def case_source(case: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``meta["filename_or_obj"]`` of the first of ``keys`` that has one, else ``""``."""
    for key in keys:
        meta = getattr(case.get(key), "meta", None) or {}
        source = meta.get("filename_or_obj")
        if isinstance(source, (list, tuple)):
            source = source[0] if len(source) == 1 else None
        if source:
            return str(source)
    return ""
