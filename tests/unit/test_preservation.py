"""Tumour-preservation score on known answers, the evaluator handler, and the position probes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from tumoraware.handlers.preservation_writer import TumourPreservationWriter, size_class
from tumoraware.metrics.position_leak import centre_excess, position_probes, segmentation_quality
from tumoraware.metrics.preservation import (
    PRESERVATION_FIELDS,
    TumourPreservationMetric,
    preservation_counts,
    summarise_preservation,
)


def _ball(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def _case():
    """A label with one tumour on slices 3..9 of 16 (slices 0..2 and 10..15 tumour-free)."""
    label = _ball((32, 32, 16), (16, 16, 6), 3).astype(np.uint8)
    assert label[..., :3].sum() == 0 and label[..., 10:].sum() == 0
    return label


def test_prediction_equal_to_label_scores_the_ceiling():
    label = _case()
    scores = preservation_counts(label, label)
    assert scores["dice"] == pytest.approx(1.0)
    assert scores["detected"] == scores["tumours"] == 1
    assert scores["false_slices"] == 0 and scores["false_components"] == 0
    assert scores["free_slices"] == 9


def test_erased_tumour_scores_zero():
    scores = preservation_counts(np.zeros((32, 32, 16)), _case())
    assert scores["dice"] == 0.0
    assert scores["detected"] == 0 and scores["tumours"] == 1


def test_hallucinated_blob_counts_as_false_tumour():
    label = _case()
    pred = label.copy()
    pred[_ball((32, 32, 16), (5, 5, 12), 2)] = 1  # a blob on tumour-free slices 10..14
    scores = preservation_counts(pred, label)
    assert scores["false_components"] == 1
    assert scores["false_slices"] == 5  # slices 10..14
    assert scores["detected"] == 1
    assert scores["dice"] < 1.0


def test_detection_needs_the_coverage_share():
    label = _case()
    pred = np.zeros_like(label)
    pred[16, 16, 6] = 1  # one voxel of ~120
    assert preservation_counts(pred, label, detection_coverage=0.1)["detected"] == 0
    assert preservation_counts(pred, label, detection_coverage=1e-3)["detected"] == 1


def test_one_hot_and_channel_first_inputs_agree():
    label = _case()
    one_hot = np.stack([1 - label, label])
    assert preservation_counts(one_hot, label[None]) == preservation_counts(label, label)


@pytest.mark.parametrize(
    ("pred", "label", "message"),
    [
        (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), "empty label"),
        (np.zeros((4, 4, 3)), np.ones((4, 4, 4)), "not on one grid"),
        (np.full((4, 4, 4), np.nan), np.ones((4, 4, 4)), "NaN"),
        (np.zeros((4, 4)), np.ones((4, 4)), "expected pred of shape"),
    ],
)
def test_bad_input_gets_a_clear_error(pred, label, message):
    with pytest.raises(ValueError, match=message):
        preservation_counts(pred, label)


def test_metric_buffers_per_case_and_pools():
    label = torch.as_tensor(_case())[None].float()
    metric = TumourPreservationMetric()
    metric(y_pred=[label, torch.zeros_like(label)], y=[label, label])
    assert metric.get_buffer().shape == (2, len(PRESERVATION_FIELDS))
    pooled = metric.aggregate()
    assert pooled["cases"] == 2
    assert pooled["dice"] == pytest.approx(0.5)
    assert pooled["detection_rate"] == pytest.approx(0.5)
    assert pooled["false_tumour_rate"] == 0.0


def test_summary_of_no_cases():
    assert summarise_preservation([]) == {"cases": 0}


def test_size_classes():
    assert size_class(3.0, (10, 50)) == "<10 cc"
    assert size_class(10.0, (10, 50)) == "10-50 cc"
    assert size_class(80.0, (10, 50)) == ">=50 cc"


def test_writer_reports_per_case_by_site_and_size(tmp_path):
    label = _case()
    affine = torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0]))  # 20 mm³ voxels

    def item(pred, name):
        meta = {"filename_or_obj": f"/data/{name}_image.nii.gz"}
        return {
            "image": torch.as_tensor(label)[None].float() * 2 - 1,
            "pred": MetaTensor(torch.as_tensor(pred)[None].float(), affine=affine, meta=meta),
            "label": MetaTensor(torch.as_tensor(label)[None].float(), affine=affine, meta=meta),
        }

    batches = [
        ([item(label, "a")], [{"patient": "a", "tumour_site": "hilar"}]),
        ([item(np.zeros_like(label), "b")], [{"patient": "b", "tumour_site": "lung"}]),
    ]

    def step(engine, batch):
        engine.state.batch = batch[1]
        return batch[0]

    engine = Engine(step)
    writer = TumourPreservationWriter(tmp_path, title="test", panels=tmp_path / "panels.png")
    writer.attach(engine)
    engine.run(batches, max_epochs=1)
    summary = json.loads((tmp_path / "preservation.json").read_text())
    assert summary["overall"]["cases"] == 2
    assert summary["by_site"]["hilar"]["dice"] == pytest.approx(1.0)
    assert summary["by_site"]["lung"]["dice"] == 0.0
    rows = list(csv.DictReader((tmp_path / "preservation_cases.csv").open()))
    assert [r["case"] for r in rows] == ["a_image", "b_image"]
    assert float(rows[0]["tumour_cc"]) == pytest.approx(label.sum() * 20 / 1000)
    assert engine.state.metrics["preservation_detection_rate"] == pytest.approx(0.5)
    assert (tmp_path / "panels.png").stat().st_size > 10_000  # two cases x two slices


class CentrePainter(torch.nn.Module):
    """A 'tumour network' that paints a disc at the crop centre whatever the image holds."""

    def forward(self, x):
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (h / 4) ** 2).float()
        return (disc * 8 - 4).expand_as(x)


class BrightReader(torch.nn.Module):
    """A network that reads content: tumour where the image is bright."""

    def forward(self, x):
        return (x - 0.5) * 20


def _crops():
    images = -torch.ones(4, 1, 32, 32)
    labels = torch.zeros(4, 1, 32, 32)
    disc = torch.as_tensor(_ball((32, 32), (16, 16), 5))
    images[:, 0][:, disc] = 1.0
    labels[:, 0][:, disc] = 1.0
    return images, labels


def test_probes_flag_a_centre_painter_and_pass_a_reader():
    images, labels = _crops()
    painter = position_probes(CentrePainter(), images, labels)
    reader = position_probes(BrightReader(), images, labels)
    assert painter["constant"]["excess"] > 0.9 and painter["rolled"]["excess"] > 0.9
    assert abs(reader["constant"]["excess"]) < 1e-6 and abs(reader["rolled"]["excess"]) < 1e-3


def test_segmentation_quality_tells_reading_from_guessing():
    images, labels = _crops()
    assert segmentation_quality(BrightReader(), images, labels)["dice"] == pytest.approx(1.0)
    assert segmentation_quality(BrightReader(), images, labels)["auc"] == pytest.approx(1.0)
    blank = segmentation_quality(lambda x: torch.full_like(x, -5.0), images, labels)
    assert blank["dice"] == 0.0 and blank["p_tumour"] < 0.01


def test_centre_excess_checks_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        centre_excess(torch.zeros(1, 2, 8, 8))


class TiedPainter(torch.nn.Module):
    """Stands in for TiedTumourUNets: ``(x, domain) -> (logits, features)``."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.scale = torch.nn.Parameter(torch.ones(()))  # so it has a device

    def forward(self, x, domain="ct"):
        return self.net(x) * self.scale, x


@pytest.mark.parametrize(("net", "leak"), [(CentrePainter(), True), (BrightReader(), False)])
def test_tumour_network_check_flags_a_leak_and_can_fail_loudly(tmp_path, net, leak):
    from tumoraware.handlers.synthesis_validation import TumourNetworkCheck

    images, labels = _crops()
    output = {"image": images, "pred": images, "label": labels}
    real = [{"image": images, "label": labels}]
    check = TumourNetworkCheck(TiedPainter(net), real, output_json=tmp_path / "u.json")
    engine = Engine(lambda e, batch: output)
    check.attach(engine)
    engine.run([0], max_epochs=1)
    saved = json.loads((tmp_path / "u.json").read_text())
    assert saved["leak"] is leak
    assert engine.state.metrics["u_position_excess"] == pytest.approx(saved["max_excess"])
    # on tumour-centred crops both look good: Dice alone cannot tell painting from reading
    assert saved["u_mri"]["on_real_mri"]["dice"] > 0.5
    if leak:
        strict = TumourNetworkCheck(TiedPainter(net), real, fail_on_leak=True)
        engine = Engine(lambda e, batch: output)
        strict.attach(engine)
        with pytest.raises(RuntimeError, match="POSITION LEAK"):
            engine.run([0], max_epochs=1)
