"""evaluate(): every metric for every method, the figures, and clear errors for bad input."""

import dataclasses
import math
import os

import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from nsde_ray.attribution import METHODS, AttributionError
from nsde_ray.config import EvalConfig
from nsde_ray.evaluate import EvaluationError, evaluate

SMALL = EvalConfig(methods=METHODS, num_images=10, n_steps=32, n_perturbations=3, nt_samples=2, saturation_images=4,
                   deepshap_baselines=4, grid_images=3)


def test_every_metric_for_every_method_and_the_figures(digits_model, tmp_path):
    model, splits = digits_model
    result = evaluate(model, splits, SMALL, out_dir=str(tmp_path), progress=False)
    metrics = result.metrics
    assert metrics["eval_images"] == 10
    for method in METHODS:
        for name in ("sensitivity", "sensitivity_valid_fraction", "sic", "aic", "infidelity", "localisation_auc"):
            assert math.isfinite(metrics[f"{name}_{method}"]), f"{name}_{method}"
        assert 0 <= metrics[f"sic_{method}"] <= 1 and 0.5 < metrics[f"localisation_auc_{method}"] <= 1
        assert -1 <= metrics[f"randomisation_similarity_{method}"] < 1
        assert metrics[f"randomisation_repeatability_{method}"] > 0.5 and metrics[f"randomisation_passed_{method}"] in (0, 1)
    assert metrics["randomisation_passed_ig"] == 1 and metrics["randomisation_passed_saliency"] == 1
    assert metrics["sensitivity"] == metrics["sensitivity_ig"] and metrics["sic"] == metrics["sic_ig"]
    assert metrics["ig_completeness_error"] < 0.25  # 32 steps (0.13 here); 64 steps give < 1% (test_attribution)
    assert 0 <= metrics["ig_alpha_95"] <= 1
    figures, gallery = result.artifacts[:3], result.artifacts[3:]
    for path in figures:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert len(gallery) == min(SMALL.grid_images, 10)  # the grid's images, as the models see them
    for path, label in zip(gallery, result.labels):
        assert os.path.basename(path).endswith(f"_{splits.class_names[int(label)]}.png")
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (32, 32) and image.mode == "L"
    again = evaluate(model, splits, SMALL, progress=False).metrics
    assert again["sensitivity_ig"] == metrics["sensitivity_ig"]  # seeded: the same numbers twice


def test_zero_correctly_classified_images_is_a_clear_error(digits_model):
    model, splits = digits_model
    always_one = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    nn.init.zeros_(always_one[1].weight)
    with torch.no_grad():
        always_one[1].bias.copy_(torch.arange(10.0) == 1)
    zeros = TensorDataset(splits.test.tensors[0][:20], torch.zeros(20, dtype=torch.long))
    with pytest.raises(EvaluationError, match="classifies none of the 20 held-out images correctly"):
        evaluate(always_one, dataclasses.replace(splits, test=zeros), SMALL, progress=False)


def test_images_of_the_wrong_shape_are_a_clear_error(digits_model):
    model, splits = digits_model
    rgb = TensorDataset(torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    with pytest.raises(EvaluationError, match=r"cannot take the evaluation images of shape \(3, 32, 32\)"):
        evaluate(model, dataclasses.replace(splits, test=rgb), SMALL, progress=False)


def test_a_method_that_does_not_apply_is_a_clear_error(digits_model):
    _, splits = digits_model
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(weights=None, num_classes=10)
    plain.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    plain.eval()
    label = plain(splits.test.tensors[0][:1]).argmax(1)
    easy = TensorDataset(splits.test.tensors[0][:1], label)
    with pytest.raises(AttributionError, match="deeplift needs every ReLU"):
        evaluate(plain, dataclasses.replace(splits, test=easy), dataclasses.replace(SMALL, methods=("ig", "deeplift")),
                 progress=False)
