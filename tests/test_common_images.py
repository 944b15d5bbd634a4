"""The common image set: one candidate set for every model, each model scored on the candidates it gets right, its
per-image record, and the tables' comparison on the candidates every compared model scored."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from nsde_ray import common_images, tables
from nsde_ray.config import EvalConfig
from nsde_ray.evaluate import ARTIFACT_PER_IMAGE, candidate_indices, evaluate_repeated, select_eval_images

TINY = EvalConfig(
    methods=("ig", "saliency"), num_images=8, n_steps=8, n_perturbations=2, saturation_images=2, grid_images=2, seed=3
)


class WithoutClass(nn.Module):
    """``model`` that never predicts class ``missing``: every image of that class is misclassified."""

    def __init__(self, model: nn.Module, missing: int):
        super().__init__()
        self.model, self.missing = model, missing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images).clone()
        logits[:, self.missing] = -math.inf
        return logits


def test_every_model_gets_the_same_candidates_and_is_scored_on_the_ones_it_classifies_correctly(digits_model):
    model, splits = digits_model
    images, labels = splits.test.tensors
    candidates = candidate_indices(len(splits.test), 30, seed=3)
    missing = int(labels[candidates[0]])
    selections = [
        select_eval_images(m, splits.test, 30, 3, torch.device("cpu")) for m in (model, WithoutClass(model, missing))
    ]
    for m, selection in zip((model, WithoutClass(model, missing)), selections):
        assert selection.candidates == candidates  # the first 30 of the seeded order, whatever the model
        with torch.no_grad():
            correct = m.eval()(images[candidates]).argmax(1) == labels[candidates]
        assert torch.equal(selection.scored, correct)
        assert torch.equal(selection.images, images[candidates][correct])
        assert torch.equal(selection.labels, labels[candidates][correct])
    weak = selections[1]
    assert 0 < int(weak.scored.sum()) < int(selections[0].scored.sum()) and missing not in weak.labels.tolist()
    assert candidate_indices(len(splits.test), 30, seed=4) != candidates  # another evaluation seed, other candidates


def test_the_per_image_record_holds_every_candidate_and_reproduces_the_logged_means(digits_model, tmp_path):
    model, splits = digits_model
    result = evaluate_repeated(model, splits, TINY, repeats=2, out_dir=str(tmp_path), progress=False)
    assert str(tmp_path / ARTIFACT_PER_IMAGE) in result.artifacts
    rows = common_images.read_csv(str(tmp_path / ARTIFACT_PER_IMAGE))
    assert len(rows) == len(result.per_image) == 2 * TINY.num_images  # every candidate of both repeats
    for seed in (3, 4):
        assert [int(r["index"]) for r in rows if r["seed"] == seed] == candidate_indices(len(splits.test), 8, seed)
    assert sum(r["scored"] for r in rows) == 2 * result.metrics["eval_images"]
    unscored = [r for r in rows if r["scored"] == 0]
    assert all(math.isnan(r["sensitivity_ig"]) and r["sic_knots_ig"] == "" for r in unscored)
    for written, kept in zip(rows, result.per_image):  # the file is the record, to the bit; NaN is left empty
        assert {k: _empty_if_nan(v) for k, v in written.items()} == {k: _empty_if_nan(v) for k, v in kept.items()}
    everything = {seed: common_images.scored_indices(rows, seed) for seed in (3, 4)}
    recomputed = common_images.metrics_on(rows, everything)
    assert set(recomputed) == {
        f"{metric}_{method}{std}"
        for metric in ("sensitivity", "sic", "localisation_auc")
        for method in TINY.methods
        for std in ("", "_std")
    }
    assert recomputed == pytest.approx({name: result.metrics[name] for name in recomputed}, rel=1e-12, nan_ok=True)


def _empty_if_nan(value: float | str) -> float | str:
    return "" if isinstance(value, float) and math.isnan(value) else value


def _row(seed: int, index: int, scored: bool, sensitivity: float, knots: str = "0.0:0.0 1.0:1.0") -> dict:
    return {
        "seed": seed,
        "index": index,
        "label": 0,
        "scored": int(scored),
        "sensitivity_ig": sensitivity if scored else math.nan,
        "sic_knots_ig": knots if scored else math.nan,
    }


# Two models of one architecture and training seed, candidates 1, 2, 3 per evaluation seed (10 and 11).
# Common images: 2 and 3 for seed 10 (none missed none, gaussian missed 1), 1 and 2 for seed 11.
FLAT = "0.0:1.0 1.0:1.0"  # a SIC curve at 1 from x = 0: AUC 1; with the diagonal's (AUC 0.5), median AUC 0.75
PLAIN = [
    _row(10, 1, True, 0.1),
    _row(10, 2, True, 0.2),
    _row(10, 3, True, 0.3, FLAT),
    _row(11, 1, True, 0.4),
    _row(11, 2, True, 0.5),
    _row(11, 3, False, 0.0),
]
NOISY = [
    _row(10, 1, False, 0.0),
    _row(10, 2, True, 1.0),
    _row(10, 3, True, 2.0),
    _row(11, 1, True, 3.0, FLAT),
    _row(11, 2, True, 4.0, FLAT),
    _row(11, 3, True, 5.0),
]


def test_models_are_compared_on_the_candidates_all_of_them_scored():
    logged = {"sensitivity_ig": 9.0, "sic_ig": 9.0, "val_accuracy": 0.9}
    results = [
        tables.ModelResult("cifar_resnet8", "none", 0, dict(logged), PLAIN),
        tables.ModelResult("cifar_resnet8", "gaussian", 0, dict(logged), NOISY),
    ]
    (plain, noisy), notes = common_images.compare(results)
    # none: seed 10 on {2, 3} (0.25), seed 11 on {1, 2} (0.45); gaussian: 1.5 and 3.5
    assert plain.metrics["sensitivity_ig"] == pytest.approx(0.35)
    assert plain.metrics["sensitivity_ig_std"] == pytest.approx(math.sqrt(0.02))
    assert noisy.metrics["sensitivity_ig"] == pytest.approx(2.5)
    assert noisy.metrics["sensitivity_ig_std"] == pytest.approx(math.sqrt(2))
    # SIC: none's seed 10 has the diagonal and the flat curve (0.75), seed 11 two diagonals (0.5); gaussian the
    # opposite: seed 10 two diagonals, seed 11 two flat curves (1)
    assert plain.metrics["sic_ig"] == pytest.approx(0.625) and noisy.metrics["sic_ig"] == pytest.approx(0.75)
    assert plain.metrics["val_accuracy"] == 0.9 and results[0].metrics["sensitivity_ig"] == 9.0  # logged ones kept
    assert notes == [
        "common images: sensitivity, SIC and localisation are scored on the 2 of 3 candidate images (per evaluation "
        "repeat) every model of the same architecture and training seed classifies correctly, so the models compared "
        "in a row saw the same images; each model's logged metrics are its means over all the candidates it "
        "classifies correctly"
    ]


def test_a_model_without_a_per_image_record_keeps_its_logged_means_and_the_tables_say_so():
    results = [
        tables.ModelResult("cifar_resnet8", "none", 0, {"sensitivity_ig": 0.35}, PLAIN),
        tables.ModelResult("cifar_resnet8", "gaussian", 0, {"sensitivity_ig": 0.7}),  # logged before the records
    ]
    compared, notes = common_images.compare(results)
    assert compared[1] is results[1]
    assert compared[0].metrics["sensitivity_ig"] == pytest.approx(0.325)  # alone: all it scored, (0.2 + 0.45) / 2
    assert notes[1] == (
        "no per-image record for 1 models (cifar_resnet8/gaussian/seed 0; evaluated before per-image records "
        "existed): their cells are their logged means, each over the images that model classified correctly, not "
        "over images common to the models compared"
    )
    report = {t.name: t for t in tables.paper_tables(results, ["cifar_resnet8"], ["ig"])}
    assert report["sensitivity_cifar_resnet8"].notes[-2:] == notes and report["sic"].notes[-2:] == notes
    assert not any("common images" in note for note in report["accuracy"].notes)


def test_an_empty_intersection_gives_nan_not_an_error():
    disjoint = [dict(row, scored=1 - row["scored"]) for row in NOISY]
    disjoint = [dict(r, sensitivity_ig=1.0, sic_knots_ig="0.0:0.0 1.0:1.0") for r in disjoint]
    results = [tables.ModelResult("m", "none", 0, {}, NOISY), tables.ModelResult("m", "gaussian", 0, {}, disjoint)]
    (first, _), notes = common_images.compare(results)
    assert math.isnan(first.metrics["sensitivity_ig"]) and math.isnan(first.metrics["sic_ig"])
    assert "on the 0 of 3 candidate images" in notes[0]


def test_knots_round_trip_exactly():
    knots = np.array([[0.0, 1 / 3, 1.0], [0.0, 2 / 7, 1.0]])
    assert np.array_equal(common_images.decode_knots(common_images.encode_knots(knots)), knots)
    assert common_images.encode_knots(None) == "" and common_images.decode_knots("") is None
