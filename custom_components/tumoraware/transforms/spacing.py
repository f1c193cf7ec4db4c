"""MONAI's ``Spacingd`` made safe for data that carries strings under ``<key>_*`` names."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, MutableMapping
from typing import Any

from monai.transforms import Spacingd

__all__ = ["SafeSpacingd"]


class SafeSpacingd(Spacingd):
    """:class:`monai.transforms.Spacingd` that leaves non-dict ``<key>_*`` entries alone.

    Works around a MONAI 1.6 bug. After resampling ``key`` of a NIfTI image, MONAI 1.6's
    ``Spacingd.__call__`` (``monai/transforms/spatial/dictionary.py``, lines 525-531 in 1.6.1)
    calls ``d[k].update(meta)`` on *every* data key ``k`` that starts with ``f"{key}_"``, as if
    each were a meta dict. MONAI Label puts the request's ``image_path`` (a string) into the data,
    so ``/infer`` fails with ``AttributeError: 'str' object has no attribute 'update'``; a
    manifest entry with an extra field such as ``label_source`` breaks training the same way.
    MONAI 1.5 has no such loop. See ``docs/monai_label.md``.

    For the parent's call this takes out every ``<key>_*`` entry that is not a mutable mapping
    (and every non-string key, which the loop's ``startswith`` would also trip on), then puts
    them back unchanged, in their places. Meta dicts (``image_meta_dict``) are still updated.
    Resampling, its trace and :meth:`inverse` are the parent's, so ``Invertd`` works as with
    ``Spacingd``. Arguments are those of :class:`~monai.transforms.Spacingd`.
    """

    def _set_aside(self, key: Hashable, value: Any) -> bool:
        """Whether the parent's meta-dict loop must not see this entry."""
        if key in self.keys:
            return False
        if not isinstance(key, str):
            return True
        prefixes = tuple(f"{k}_" for k in self.keys if isinstance(k, str))
        return key.startswith(prefixes) and not isinstance(value, MutableMapping)

    def __call__(
        self, data: Mapping[Hashable, Any], lazy: bool | None = None
    ) -> dict[Hashable, Any]:
        order = list(data)
        aside = {k: v for k, v in data.items() if self._set_aside(k, v)}
        kept = {k: v for k, v in data.items() if k not in aside}
        out = super().__call__(kept, lazy=lazy)
        restored = {k: aside[k] if k in aside else out[k] for k in order if k in aside or k in out}
        restored.update((k, v) for k, v in out.items() if k not in restored)
        return restored
