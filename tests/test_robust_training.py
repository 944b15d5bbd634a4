"""Robust-training baselines: FGSM with a random start, the catastrophic-overfitting guard, double backprop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nsde_ray.robust_training import (
    OverfitGuard,
    fgsm_loss,
    fgsm_perturbation,
    gradient_penalty_loss,
    pgd_perturbation,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CLASSES = 4


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A tiny smooth CNN (3, 6, 6) -> 4 logits; tanh, so its input gradient depends on its input."""
    torch.manual_seed(0)
    layers = nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, CLASSES)
    return nn.Sequential(*layers).to(dtype)


def _channels(values, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).view(1, -1, 1, 1)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - _channels(MEAN)) / _channels(STD)


def _batch(n: int = 16, low: float = 0.0, high: float = 1.0, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (n, 3, 6, 6) with pixels uniform in [low, high], and labels (n,)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = low + (high - low) * torch.rand(n, 3, 6, 6, generator=generator)
    return _normalise(pixels), torch.randint(CLASSES, (n,), generator=generator)


def _prototypes(n: int = 64, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable task: normalised images of one of four pixel prototypes plus noise, and their classes."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = 0.3 + 0.4 * torch.rand(CLASSES, 3, 6, 6, generator=generator)
    labels = torch.arange(n) % CLASSES
    pixels = (prototypes[labels] + 0.05 * torch.randn(n, 3, 6, 6, generator=generator)).clamp(0, 1)
    return _normalise(pixels), labels


def _trained_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model, (images, labels) = _model(), _prototypes()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(40):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model, images, labels


def _pixel_delta(delta: torch.Tensor) -> torch.Tensor:
    return delta * _channels(STD)


def test_fgsm_with_epsilon_zero_is_plain_training_bit_for_bit():
    """Same weights after one SGD step; no random numbers drawn; one forward pass."""
    images, labels = _batch()
    plain, robust = _model(), _model()
    steps = []
    robust.register_forward_hook(lambda *_: steps.append(1))
    for model, loss_fn in [
        (plain, lambda m: F.cross_entropy(m(images), labels)),
        (robust, lambda m: fgsm_loss(m, images, labels, 0.0, 0.0, MEAN, STD)),
    ]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rng = torch.get_rng_state()
        loss_fn(model).backward()
        optimizer.step()
        assert torch.equal(torch.get_rng_state(), rng)
    assert len(steps) == 1
    for a, b in zip(plain.parameters(), robust.parameters()):
        assert torch.equal(a, b)


def test_fgsm_stays_in_the_ball_and_the_pixel_range_and_leaves_no_parameter_gradients():
    """Images touching 0 and 1, per-channel std: |delta| <= eps in pixels, x + delta in [0, 1]."""
    model, (images, labels), epsilon = _model(), _batch(64), 0.1
    delta = fgsm_perturbation(model, images, labels, epsilon, 1.25 * epsilon, MEAN, STD)
    assert _pixel_delta(delta).abs().max() <= epsilon + 1e-6
    pixels = (images + delta) * _channels(STD) + _channels(MEAN)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert (pixels.min() < 1e-3) and (pixels.max() > 1 - 1e-3)  # the range did bind somewhere
    assert all(p.grad is None for p in model.parameters())
    assert not delta.requires_grad


def test_fgsm_with_a_large_step_lands_on_the_boundary_where_the_gradient_is_nonzero():
    """Pixels in [0.3, 0.7] and eps 0.1: the range never binds, and the tanh model's input gradient is
    non-zero everywhere, so every coordinate ends at +-eps in pixel units."""
    model, (images, labels), epsilon = _model(), _batch(16, 0.3, 0.7), 0.1
    delta = _pixel_delta(fgsm_perturbation(model, images, labels, epsilon, 10 * epsilon, MEAN, STD))
    torch.testing.assert_close(delta.abs(), torch.full_like(delta, epsilon), atol=1e-6, rtol=0)


def test_fgsm_and_pgd_raise_the_loss_of_a_trained_model():
    """On a trained tiny model the FGSM example's mean loss exceeds the clean one's and PGD's exceeds FGSM's."""
    model, images, labels = _trained_model()
    epsilon = 0.05
    torch.manual_seed(3)
    fgsm = fgsm_perturbation(model, images, labels, epsilon, 1.25 * epsilon, MEAN, STD)
    pgd = pgd_perturbation(model, images, labels, epsilon, epsilon / 4, 10, MEAN, STD)
    with torch.no_grad():
        clean, fgsm_loss_, pgd_loss = (F.cross_entropy(model(images + d), labels).item() for d in (0, fgsm, pgd))
    assert clean < fgsm_loss_ <= pgd_loss + 1e-6
    assert _pixel_delta(pgd).abs().max() <= epsilon + 1e-6


def test_fgsm_loss_trains_on_the_adversarial_example():
    """The loss is the cross-entropy at x + delta (same random start) and its gradient reaches the parameters."""
    model, (images, labels) = _model(), _batch()
    torch.manual_seed(5)
    loss = fgsm_loss(model, images, labels, 0.1, 0.125, MEAN, STD)
    torch.manual_seed(5)
    delta = fgsm_perturbation(model, images, labels, 0.1, 0.125, MEAN, STD)
    torch.testing.assert_close(loss, F.cross_entropy(model(images + delta), labels), atol=0, rtol=0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _per_sample_input_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """d CE_i / d pixel_i, one sample at a time: (N, C, H, W)."""
    gradients = []
    for image, label in zip(images, labels):
        image = image[None].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(F.cross_entropy(model(image), label[None]), image)
        gradients.append(gradient[0])
    return torch.stack(gradients) / _channels(STD, images.dtype)


def test_gradient_penalty_value_matches_per_sample_gradients():
    model, (images, labels), weight = _model(torch.float64), _batch(8), 0.7
    images = images.double()
    expected = (
        F.cross_entropy(model(images), labels)
        + weight * _per_sample_input_gradients(model, images, labels).pow(2).sum(dim=(1, 2, 3)).mean()
    )
    torch.testing.assert_close(
        gradient_penalty_loss(model, images, labels, weight, STD), expected, atol=1e-12, rtol=1e-12
    )


def test_gradient_penalty_parameter_gradient_matches_torch_func():
    """Autograd through create_graph against torch.func.grad of a loss built on torch.func.grad, in float64."""
    model, (images, labels), weight = _model(torch.float64), _batch(8), 0.7
    images, std = images.double(), _channels(STD, torch.float64)
    params = {name: p.detach() for name, p in model.named_parameters()}

    def sample_loss(params, image, label):
        return F.cross_entropy(torch.func.functional_call(model, params, (image[None],)), label[None])

    def penalised(params):
        input_gradients = (
            torch.stack(
                [torch.func.grad(sample_loss, argnums=1)(params, image, label) for image, label in zip(images, labels)]
            )
            / std
        )
        plain = F.cross_entropy(torch.func.functional_call(model, params, (images,)), labels)
        return plain + weight * input_gradients.pow(2).sum(dim=(1, 2, 3)).mean()

    expected = torch.func.grad(penalised)(params)
    gradient_penalty_loss(model, images, labels, weight, STD).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-10, rtol=0)
    assert images.grad is None


def test_gradient_penalty_with_weight_zero_is_the_plain_loss():
    model, (images, labels) = _model(), _batch()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    loss = gradient_penalty_loss(model, images, labels, 0.0, STD)
    assert len(calls) == 1
    torch.testing.assert_close(loss, F.cross_entropy(model(images), labels), atol=0, rtol=0)


@pytest.mark.parametrize(
    "accuracies, trips",
    [
        ([0.50, 0.55, 0.48, 0.60, 0.45], [False] * 5),  # noisy but steady: never more than 0.2 below the best
        ([0.40, 0.55, 0.50, 0.30], [False, False, False, True]),  # 0.25 below the best, though only 0.2 below the last
        ([0.60, 0.05], [False, True]),
    ],
)
def test_guard_trips_on_a_collapse_from_the_best(accuracies, trips):
    guard = OverfitGuard(0.03, MEAN, STD, drop=0.2)
    assert [guard.observe(accuracy) for accuracy in accuracies] == trips


class _Probe(nn.Module):
    """Two logits from images (N, 3, 4, 4): bias (1, 0) plus ``slope * sum(x)`` on the second; records its modes."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope, self.modes = slope, []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        second = self.slope * images.flatten(1).sum(dim=1)
        return torch.stack([torch.ones_like(second), second], dim=1)


def test_guard_runs_pgd_in_eval_mode_and_trips_when_robustness_collapses():
    """Images at the mean (normalised 0), all labelled 0: with slope 0 nothing can flip them (accuracy 1);
    with slope 1 a 0.1 pixel push moves the second logit by 48 * 0.1 / std >> 1 (accuracy 0)."""
    images, labels = torch.zeros(8, 3, 4, 4), torch.zeros(8, dtype=torch.long)
    guard = OverfitGuard(0.1, MEAN, STD, pgd_steps=3)
    rng = torch.get_rng_state()
    steady, fragile = _Probe(0.0).train(), _Probe(1.0).train()
    assert not guard.check(steady, images, labels) and not guard.check(steady, images, labels)
    assert guard.best == 1.0
    assert guard.check(fragile, images, labels)
    assert steady.training and fragile.training
    assert not any(steady.modes + fragile.modes)
    assert torch.equal(torch.get_rng_state(), rng)
