"""The on-disk slice store: same samples as cutting in memory, reused, invalidated, crash-safe."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    FgBgToIndicesd,
    LoadImaged,
    MapTransform,
)
from monai.utils import set_determinism

from tumoraware.data.slice_dataset import SliceCacheDataset
from tumoraware.data.slice_store import SliceStore, split_at_first_random
from tumoraware.transforms import VolumeToSlicesd


class FailOnce(MapTransform):
    """Raises while ``flag`` exists and the item is ``case``: a crash in the middle of a build."""

    def __init__(self, flag: Path, case: str) -> None:
        super().__init__(keys="image")
        self.flag, self.case = str(flag), case

    def __call__(self, data):
        if os.path.exists(self.flag) and data.get("case") == self.case:
            raise RuntimeError("simulated crash")
        return data


def write_cases(folder: Path, n: int = 5, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        image = rng.normal(size=(24, 20, 12)).astype(np.float32)
        label = np.zeros((24, 20, 12), np.uint8)
        label[8:14, 6:12, 3 + i % 3 : 7 + i % 3] = 1
        affine = np.diag([1.5, 1.5, 4.0, 1.0])
        paths = {}
        for key, array in (("image", image), ("label", label)):
            path = folder / f"c{i}_{key}.nii.gz"
            nib.save(nib.Nifti1Image(array, affine), path)
            paths[key] = str(path)
        items.append({**paths, "case": f"c{i}"})
    return items


def volume_transform(flag: Path | None = None) -> Compose:
    set_determinism(0)
    head = [
        LoadImaged(["image", "label"], image_only=True),
        EnsureChannelFirstd(["image", "label"]),
    ]
    if flag is not None:
        head.append(FailOnce(flag, "c3"))
    return Compose([
        *head,
        VolumeToSlicesd(["image", "label"], tumour_free_share=0.5),
        FgBgToIndicesd("label", image_key="image", image_threshold=-0.5),
        EnsureTyped(["image", "label"], dtype=torch.float32, track_meta=False),
    ])  # fmt: skip


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(x, (torch.Tensor, np.ndarray)):
            assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape, key
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), key
        else:
            assert x == y, key


@pytest.mark.parametrize("workers", [0, 2])
def test_store_gives_the_samples_cut_in_memory(tmp_path: Path, workers: int) -> None:
    items = write_cases(tmp_path)
    memory = SliceCacheDataset(items, volume_transform(), progress=False)
    stored = SliceCacheDataset(
        items, volume_transform(), progress=False, cache_dir=tmp_path / "c", cache_workers=workers
    )
    assert len(memory) == len(stored) > len(items)
    assert any(s["has_tumour"] is False for s in memory.data)  # the random draw is exercised
    for i in range(len(memory)):
        assert_same(memory[i], stored[i])


def test_store_is_compact_and_lossless(tmp_path: Path) -> None:
    store = SliceStore(write_cases(tmp_path), volume_transform(), tmp_path / "c", 0, False)
    blobs = store.samples[0]
    assert blobs["label"].stored == np.dtype(np.uint8).str  # 0/1 float32 label on disk as uint8
    assert blobs["label"].dtype == np.dtype(np.float32).str
    assert blobs["label_bg_indices"].stored == np.dtype(np.int32).str
    assert blobs["image"].stored == np.dtype(np.float32).str  # real values: kept as they are
    sample = store[0]
    assert (
        sample["label"].dtype == torch.float32 and sample["label_bg_indices"].dtype == torch.int64
    )


def test_store_is_reused_and_invalidated_by_content(tmp_path: Path) -> None:
    items = write_cases(tmp_path)
    first = SliceStore(items, volume_transform(), tmp_path / "c", 0, False)
    stamp = first.payload_path.stat().st_mtime_ns
    again = SliceStore(items, volume_transform(), tmp_path / "c", 0, False)
    assert again.folder == first.folder and again.payload_path.stat().st_mtime_ns == stamp
    image = nib.load(items[1]["image"])
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj) + 1.0, image.affine), items[1]["image"])
    changed = SliceStore(items, volume_transform(), tmp_path / "c", 0, False)
    assert changed.folder != first.folder
    other_seed = volume_transform()
    other_seed.set_random_state(seed=7)  # another draw of tumour-free slices: another store
    assert SliceStore(items, other_seed, tmp_path / "c", 0, False).folder != first.folder


def test_a_crashed_build_resumes_the_same_random_stream(tmp_path: Path) -> None:
    items = write_cases(tmp_path)
    cold = SliceCacheDataset(items, volume_transform(), progress=False)
    flag = tmp_path / "fail"
    flag.touch()
    with pytest.raises(RuntimeError):  # "simulated crash", wrapped by MONAI
        SliceStore(items, volume_transform(flag), tmp_path / "c", 2, False)
    folders = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert len(folders) == 1 and len(list(folders[0].glob("volume_*.pkl"))) == 3
    with open(folders[0] / "payload.bin", "ab") as payload:  # a torn write after the last commit
        payload.write(b"\0" * 1000)
    flag.unlink()
    resumed = SliceStore(items, volume_transform(flag), tmp_path / "c", 2, False)
    assert resumed.folder == folders[0]
    assert len(resumed) == len(cold)
    for i in range(len(cold)):
        assert_same(cold[i], resumed[i])


def _build_in_child(args: tuple[list[dict], str]) -> int:
    items, cache = args
    return len(SliceStore(items, volume_transform(), cache, 0, False))


def test_concurrent_builders_wait_for_one_another(tmp_path: Path) -> None:
    items = write_cases(tmp_path, n=4)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        sizes = pool.map(_build_in_child, [(items, str(tmp_path / "c"))] * 2)
    assert sizes[0] == sizes[1]
    (folder,) = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert len(list(folder.glob("volume_*.pkl"))) == 4


def test_split_keeps_random_transforms_in_the_tail() -> None:
    transform = volume_transform()
    head, tail = split_at_first_random(transform)
    assert head.keywords == {"end": 2} and tail.keywords == {"start": 2}
    assert split_at_first_random(transform.transforms[-1]) == (None, transform.transforms[-1])


def test_no_slice_at_all_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one slice"):
        SliceStore([], volume_transform(), tmp_path / "c", 0, False)
