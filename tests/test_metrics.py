"""Metrics against references: Captum's sensitivity_max, scikit-learn's ROC AUC, saturation on known curves."""

import math

import numpy as np
import pytest
import torch
from captum.metrics import sensitivity_max
from torch import nn

from nsde_ray.attribution import make_explainer
from nsde_ray.metrics.localisation import localisation_auc
from nsde_ray.metrics.randomisation import passes, randomisation_check, randomised_copy, rank_correlation
from nsde_ray.metrics.saturation import ig_saturation
from nsde_ray.metrics.sensitivity import max_sensitivity, mean_sensitivity, uniform_perturbations


def box_mask(box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """A (H, W) bool mask that is True inside the bounding box (x0, y0, x1, y1), pixels, end exclusive."""
    x0, y0, x1, y1 = box
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] = True
    return mask


@pytest.mark.parametrize("method", ["saliency", "ig"])
def test_max_sensitivity_equals_captum_on_the_same_perturbations(digits_model, method):
    model, splits = digits_model
    images, labels = splits.test.tensors[0][:8], splits.test.tensors[1][:8]
    deltas = uniform_perturbations(images.shape, 5, 0.05, splits.std, torch.Generator().manual_seed(0))
    explain = make_explainer(model, method, n_steps=16)
    ours = max_sensitivity(explain, model, images, labels, deltas, keep_prediction=False, chunk_size=16)

    def same_perturbations(expanded, radius):  # Captum repeats each input n times in a row, as deltas.flatten(0, 1)
        return expanded + deltas.flatten(0, 1)

    def captum_explain(x, target):  # Captum passes a tuple for the unperturbed inputs and expects one back
        return (explain(x[0], target),) if isinstance(x, tuple) else explain(x, target)

    theirs = sensitivity_max(
        captum_explain, images, perturb_func=same_perturbations, n_perturb_samples=5, target=labels
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert (ours > 0).all()


def test_perturbations_stay_in_the_pixel_ball_and_prediction_filter_applies(digits_model):
    model, splits = digits_model
    deltas = uniform_perturbations((4, 1, 32, 32), 10, 0.02, splits.std, torch.Generator().manual_seed(0))
    pixel_deltas = deltas * torch.tensor(splits.std).view(1, 1, -1, 1, 1)
    assert pixel_deltas.abs().max() <= 0.02 + 1e-7 and pixel_deltas.abs().max() > 0.019

    class Flipper(nn.Module):  # predicts class 0 for the clean inputs and class 1 for any perturbed one
        def forward(self, x):
            flipped = (x.flatten(1).abs().sum(1) > 1e-3).float()
            return torch.stack([1 - flipped, flipped], dim=1) + 0 * x.flatten(1).sum(1, keepdim=True)

    images = torch.zeros(3, 1, 4, 4)
    deltas = torch.full((3, 2, 1, 4, 4), 0.01)
    explain = lambda x, t: x + 1.0  # noqa: E731 - an explanation that changes with the input
    result = max_sensitivity(explain, Flipper(), images, torch.zeros(3, dtype=torch.long), deltas)
    assert torch.isnan(result).all()  # every perturbation flips the prediction: no valid max


@pytest.mark.parametrize("broken", ["nan", "inf", "zero", "nan_when_perturbed"])
def test_broken_maps_give_a_nan_sensitivity_never_a_good_one(digits_model, broken):
    model, splits = digits_model
    images, labels = splits.test[0][0].unsqueeze(0).repeat(3, 1, 1, 1), torch.full((3,), splits.test[0][1])
    deltas = uniform_perturbations(images.shape, 4, 0.02, splits.std, torch.Generator().manual_seed(0))
    clean = images.clone()

    def explain(x, t):
        maps = x.clone()
        hit = slice(None) if broken != "nan_when_perturbed" else ~torch.isclose(x, clean[:1]).flatten(1).all(1)
        maps[hit] = {"nan": float("nan"), "inf": float("inf"), "zero": 0.0, "nan_when_perturbed": float("nan")}[broken]
        return maps

    per_image = max_sensitivity(explain, model, images, labels, deltas, keep_prediction=False)
    assert torch.isinf(per_image).all()
    metric, valid = mean_sensitivity(per_image)
    assert math.isnan(metric) and valid == 1.0


def test_mean_sensitivity_leaves_out_images_without_a_kept_perturbation_only():
    metric, valid = mean_sensitivity(torch.tensor([0.1, float("nan"), 0.3, 0.2]))
    assert metric == pytest.approx(0.2) and valid == 0.75
    assert math.isnan(mean_sensitivity(torch.tensor([float("nan")] * 2))[0])
    assert math.isnan(mean_sensitivity(torch.tensor([0.1, float("inf"), float("nan")]))[0])


def _randomisation(digits_model, explainer_for):
    model, splits = digits_model
    images = torch.stack([splits.test[i][0] for i in range(24)])
    labels = torch.tensor([splits.test[i][1] for i in range(24)])
    randomised = randomised_copy(model, seed=0)
    return randomisation_check(explainer_for(model), explainer_for(randomised), images, labels)


def test_randomised_copy_has_new_weights_and_the_same_architecture(digits_model):
    model, _ = digits_model
    randomised = randomised_copy(model, seed=0)
    assert randomised.state_dict().keys() == model.state_dict().keys() and not randomised.training
    changed = [
        not torch.equal(a, b)
        for (name, a), b in zip(model.state_dict().items(), randomised.state_dict().values())
        if name.endswith("weight")
    ]
    assert all(changed)
    again = randomised_copy(model, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(randomised.state_dict().values(), again.state_dict().values()))


def test_rank_correlation_is_spearman_of_absolute_maps_and_nan_without_a_rank_order():
    from scipy.stats import spearmanr

    first, second = torch.randn(3, 5, 5), torch.randn(3, 5, 5)
    expected = [spearmanr(first[i].abs().flatten(), second[i].abs().flatten()).statistic for i in range(3)]
    assert np.allclose(rank_correlation(first, second), expected)
    assert np.allclose(rank_correlation(first, -first), 1.0)
    constant = torch.ones(3, 5, 5)
    assert np.isnan(rank_correlation(constant, second)).all()
    assert np.isnan(rank_correlation(first.masked_fill(first > 1, float("nan")), second)).any()


@pytest.mark.parametrize(
    "name, explainer_for",
    [
        ("constant", lambda model: lambda x, t: torch.ones_like(x)),
        ("zero", lambda model: lambda x, t: torch.zeros_like(x)),
        ("fresh random", lambda model: lambda x, t: torch.rand_like(x)),
        ("input itself", lambda model: lambda x, t: x.clone()),
        (
            "fixed random pattern",
            lambda model: lambda x, t: torch.rand(x.shape, generator=torch.Generator().manual_seed(1)),
        ),
    ],
)
def test_explainers_that_ignore_the_model_fail_the_randomisation_check(digits_model, name, explainer_for):
    similarity, repeatability = _randomisation(digits_model, explainer_for)
    assert not passes(similarity, repeatability), (name, similarity, repeatability)


@pytest.mark.parametrize("method", ["ig", "saliency"])
def test_attributions_of_a_trained_model_pass_the_randomisation_check(digits_model, method):
    model, splits = digits_model
    black = (-torch.tensor(splits.mean) / torch.tensor(splits.std)).view(1, -1, 1, 1)
    similarity, repeatability = _randomisation(
        digits_model, lambda m: make_explainer(m, method, baselines=black, n_steps=16)
    )
    assert repeatability == pytest.approx(1.0) and similarity < 0.9
    assert passes(similarity, repeatability)


def test_a_deterministic_explainer_is_not_repeated_and_scores_the_same():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    images, labels = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    calls = []

    def explainer_for(net):
        def explain(x, target):
            calls.append(net)
            return make_explainer(net, "saliency")(x, target)

        return explain

    randomised = randomised_copy(model, seed=0)
    explain, explain_randomised = explainer_for(model), explainer_for(randomised)
    repeated = randomisation_check(explain, explain_randomised, images, labels, seed=2)
    calls.clear()
    once = randomisation_check(explain, explain_randomised, images, labels, seed=2, repeat=False)
    # a deterministic method repeats itself exactly, so its repeatability is not reported (None), not 1 by construction
    assert once == (repeated[0], None) and repeated[1] == pytest.approx(1.0)
    assert calls == [model, randomised]  # the unrepeated check explains the trained model once


def test_localisation_auc_is_the_tpr_fpr_area():
    mask = box_mask((2, 2, 6, 6), 8, 8).unsqueeze(0).repeat(3, 1, 1)
    perfect = mask.float() + 0.01 * torch.rand(3, 8, 8)
    inverted = -perfect.clone()  # |.| is used: sign does not matter
    random = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert np.allclose(localisation_auc(perfect, mask), 1.0)
    assert np.allclose(localisation_auc(inverted, mask), 1.0)
    assert abs(localisation_auc(1 - mask.float() + 0.01 * random, mask).mean()) < 1e-9
    assert 0.2 < localisation_auc(random, mask).mean() < 0.8
    with pytest.raises(ValueError, match="differ"):
        localisation_auc(random, mask[:, :4])


def test_ig_saturation_on_a_model_that_saturates_early():
    """F(x) = 10 * tanh(20 * w.x): the logit saturates near alpha ~ 0.1 and the gradient then vanishes."""

    class Saturating(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, 1, 4, 4) / 16)

        def forward(self, x):
            score = 10 * torch.tanh(20 * (x * self.w).flatten(1).sum(1))
            return torch.stack([score, -score], dim=1)

    inputs = torch.ones(2, 1, 4, 4)
    result = ig_saturation(Saturating(), inputs, torch.zeros(2, dtype=torch.long), n_alphas=101)
    assert result.logits.shape == (2, 101)
    assert 0.05 < float(result.alpha_95[0]) < 0.15
    assert float(result.grad_norm_after[0]) < 0.5 * float(result.grad_norm[0, 0])

    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))  # never saturates: the logit gain is linear in alpha
    # level 0.93 sits between grid points, so float rounding cannot move alpha_95 off 0.95
    result = ig_saturation(linear, torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 0]), n_alphas=21, level=0.93)
    assert torch.allclose(result.alpha_95, torch.full((3,), 0.95), atol=1e-6)
    assert torch.allclose(result.alignment_after[:2], torch.ones(2), atol=1e-5)


def test_max_sensitivity_of_fast_ig_equals_captum_sensitivity_max_of_captum_ig(digits_model):
    """The GPU benchmark's comparison (benchmarks/gpu_targets.py) at CPU size: our batched metric over the fast
    IG against captum.metrics.sensitivity_max over Captum's IntegratedGradients, same perturbations."""
    from captum.attr import IntegratedGradients

    model, splits = digits_model
    images, labels = splits.test.tensors[0][:6], splits.test.tensors[1][:6]
    deltas = uniform_perturbations(images.shape, 4, 0.05, splits.std, torch.Generator().manual_seed(0))
    fast = make_explainer(model, "ig", n_steps=16, fast=True, internal_batch_size=128)
    ours = max_sensitivity(fast, model, images, labels, deltas, keep_prediction=False, chunk_size=24)
    theirs = sensitivity_max(
        IntegratedGradients(model).attribute,
        images,
        perturb_func=lambda x, r: x + deltas.flatten(0, 1),
        n_perturb_samples=4,
        target=labels,
        n_steps=16,
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-6)
