"""Attribution methods against references: linear models, completeness, DeepLIFT summation-to-delta."""

import pytest
import torch
import torchvision
from captum.attr import DeepLift
from torch import nn

from nsde_ray.attribution import (
    METHODS,
    AttributionError,
    attribute,
    attribution_map,
    check_applicable,
    ig_baseline,
    make_explainer,
)
from nsde_ray.config import NoiseConfig
from nsde_ray.models import build_model


@pytest.fixture(scope="module")
def sde_model():
    torch.manual_seed(0)
    model = build_model("cifar_resnet8", num_classes=4, in_channels=3, noise=NoiseConfig("gaussian", 0.5))
    model.train()
    with torch.no_grad():  # settle batch-norm running statistics away from their identity init
        for _ in range(5):
            model(torch.randn(16, 3, 16, 16))
    return model


def test_ig_on_a_linear_model_is_gradient_times_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    inputs, target = torch.randn(4, 2, 5, 5), torch.tensor([0, 1, 2, 1])
    weights = model[1].weight[target].view(4, 2, 5, 5)
    for method in ("ig", "deeplift", "saliency"):
        expected = weights * inputs if method != "saliency" else weights
        got = attribute(model, inputs, target, method)
        torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)


def _logit_gain(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """F(x) - F(b) per image (B,), F the target logit of the noise-free (eval-mode) model."""
    model.eval()
    with torch.no_grad():
        return (
            model(inputs).gather(1, target[:, None]).squeeze(1)
            - model(baseline.expand(1, *inputs.shape[1:]))[0, target]
        )


# Completeness, sum(IG) = F(x) - F(b), holds for the integral; with n Gauss-Legendre steps the sum is
# off by a quadrature error. Along the path the gradient of a ReLU network (batch norm in eval mode,
# no noise) is piecewise constant, so the rule converges only about like 1/n, and the error is an
# absolute one in logit units (about 0.04 logits per image at 64 steps on the digits model), whatever
# the gain F(x) - F(b). Divided by each image's own gain it is ill-conditioned: on the digits model
# trained with torch 2.14.1 the four images with |gain| < 2 logits (0.46 to 1.8) had relative errors
# of 2.4-7.7% at 64 steps (mean 1.5% over 16), the twelve others < 0.8%; float64 gives the same
# figures, and they fall with the steps (0.36% mean at 256, 0.03% at 4096). So the gap is measured
# against the batch's mean |gain|, the scale of what IG distributes, and shown to shrink with n; a
# real fault (noise left on, a wrong baseline) leaves a gap of the order of the gain that does not.


def test_ig_completeness_on_a_trained_stochastic_resnet(digits_model):
    """sum(IG) = F(x) - F(baseline) up to the quadrature error: at 64 steps within 1% of the mean |gain| on
    average and 5% for the worst image, and the gap shrinks with the steps (64 -> 256: about 4x)."""
    model, splits = digits_model
    inputs, target = splits.test.tensors[0][:16], splits.test.tensors[1][:16]
    baseline = ig_baseline(splits.mean, splits.std)  # black; (1, C, 1, 1), broadcast over the images
    model.train()
    coarse = attribute(model, inputs, target, "ig", n_steps=64, baselines=baseline)
    assert model.training  # restored after the eval-mode attribution
    fine = attribute(model, inputs, target, "ig", n_steps=256, baselines=baseline)
    gain = _logit_gain(model, inputs, target, baseline)
    scale = gain.abs().mean()
    gap, fine_gap = ((a.flatten(1).sum(1) - gain).abs() for a in (coarse, fine))
    assert (gap / scale).mean() < 0.01 and (gap / scale).max() < 0.05, gap / scale  # 0.63%, 1.5% seen
    assert fine_gap.mean() < gap.mean() / 2, (gap.mean(), fine_gap.mean())  # 0.037 -> 0.0094 logits seen


def test_deeplift_summation_to_delta_holds_on_our_stochastic_resnets():
    """Captum's convergence delta is ~0 only if every ReLU is used once: this catches torchvision's reused ReLU."""
    torch.manual_seed(0)
    for arch in ("cifar_resnet14", "resnet18", "resnet50"):
        model = build_model(arch, num_classes=3, noise=NoiseConfig("gaussian", 0.5)).eval()
        inputs = torch.randn(3, 3, 32, 32)
        attributions, delta = DeepLift(model).attribute(
            inputs, baselines=torch.zeros_like(inputs), target=torch.tensor([0, 1, 2]), return_convergence_delta=True
        )
        with torch.no_grad():
            gain = (model(inputs) - model(torch.zeros_like(inputs)))[torch.arange(3), torch.tensor([0, 1, 2])]
        assert (delta.abs() / gain.abs().clamp_min(1e-3)).max() < 1e-3, arch


def test_deeplift_refuses_torchvision_blocks_with_a_reused_relu():
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    with pytest.raises(AttributionError, match="in-place ReLUs: build it with nsde_ray.models.build_model"):
        check_applicable(model, "deeplift", torch.randn(1, 3, 32, 32))
    for relu in (m for m in model.modules() if isinstance(m, nn.ReLU)):
        relu.inplace = False
    with pytest.raises(AttributionError, match="reuses one"):
        check_applicable(model, "deepshap", torch.randn(1, 3, 32, 32))
    check_applicable(model, "ig", torch.randn(1, 3, 32, 32))  # gradient methods do not care


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_a_stochastic_resnet_without_noise(sde_model, method):
    inputs, target = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    baselines = torch.randn(4, 3, 16, 16) if method == "deepshap" else None
    first = attribute(sde_model, inputs, target, method, baselines=baselines, n_steps=8, nt_samples=3)
    assert first.shape == inputs.shape and torch.isfinite(first).all()
    if method != "ig_nt":  # deterministic: no training noise leaks into attributions
        again = attribute(sde_model, inputs, target, method, baselines=baselines, n_steps=8)
        torch.testing.assert_close(first, again)
    signed, absolute = attribution_map(first), attribution_map(first, absolute=True)
    assert signed.shape == (3, 16, 16) and (absolute >= signed.abs() - 1e-6).all()


def test_bad_requests_fail_clearly(sde_model):
    with pytest.raises(
        AttributionError, match="unknown attribution method 'gradcam'; choose one of: ig, ig_nt, saliency, deeplift"
    ):
        make_explainer(sde_model, "gradcam")
    with pytest.raises(AttributionError, match=r"images \(B, C, H, W\)"):
        attribute(sde_model, torch.randn(3, 16, 16), torch.tensor([0, 1, 2]), "ig")
    with pytest.raises(AttributionError, match="deepshap needs a baseline distribution"):
        make_explainer(sde_model, "deepshap")
    with pytest.raises(AttributionError, match="baseline shape"):
        attribute(sde_model, torch.randn(2, 3, 16, 16), torch.tensor([0, 1]), "ig", baselines=torch.zeros(1, 1, 16, 16))


# The fast path: same quantities as Captum, large internal batches, optional bf16/channels_last.


@pytest.mark.parametrize("internal_batch_size", [3, 16, 512])  # one step of a slice / several steps / all at once
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fast_ig_equals_captum_ig(sde_model, internal_batch_size, memory_format):
    from captum.attr import IntegratedGradients

    from nsde_ray.attribution import eval_mode, integrated_gradients

    torch.manual_seed(1)
    inputs, target = torch.randn(5, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0])
    baseline = torch.randn(1, 3, 16, 16)
    for base in (None, baseline):
        with eval_mode(sde_model):
            reference = IntegratedGradients(sde_model).attribute(
                inputs,
                baselines=None if base is None else base.expand_as(inputs).contiguous(),
                target=target,
                n_steps=20,
            )
        ours = integrated_gradients(
            sde_model,
            inputs,
            target,
            base,
            n_steps=20,
            internal_batch_size=internal_batch_size,
            memory_format=memory_format,
            fold_bn=False,
        )
        assert ours.dtype == torch.float32 and ours.is_contiguous()
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())


def test_fast_explainers_equal_captum_through_make_explainer(digits_model):
    from nsde_ray.attribution import completeness_error

    model, splits = digits_model
    inputs, target = splits.test.tensors[0][:8], splits.test.tensors[1][:8]
    for method in ("ig", "saliency"):
        slow = make_explainer(model, method, n_steps=16)(inputs, target)
        exact = make_explainer(model, method, n_steps=16, fast=True, amp=True, internal_batch_size=32, fold_bn=False)(
            inputs, target
        )
        torch.testing.assert_close(exact, slow, rtol=1e-4, atol=1e-5 * slow.abs().max().item())  # amp is CUDA-only
        # Batch norm folded: the same function up to float rounding, which can flip a ReLU sitting at its
        # kink for some path points and so moves a few attribution values: most maps agree to 1e-5, and
        # one with a flipped ReLU to 1e-2 (1.9e-3 seen) per image.
        folded = make_explainer(model, method, n_steps=16, fast=True, internal_batch_size=32)(inputs, target)
        relative = (folded - slow).flatten(1).norm(dim=1) / slow.flatten(1).norm(dim=1)
        assert relative.median() < 1e-5 and relative.max() < 1e-2, relative
    ig = make_explainer(model, "ig", n_steps=64, fast=True)(inputs, target)
    error = completeness_error(model, inputs, target, ig)  # relative to each image's own gain
    gain = _logit_gain(model, inputs, target, torch.zeros(1, *inputs.shape[1:]))
    gap = (ig.flatten(1).sum(1) - gain).abs()
    torch.testing.assert_close(error, gap / gain.abs())
    # Against the mean |gain|, as in the completeness test above (the quadrature error is absolute).
    assert (gap / gain.abs().mean()).mean() < 0.01 and (gap / gain.abs().mean()).max() < 0.05, gap


def test_fast_ig_keeps_the_model_mode_and_needs_no_parameter_gradients(sde_model):
    from nsde_ray.attribution import integrated_gradients

    sde_model.train()
    integrated_gradients(sde_model, torch.randn(2, 3, 16, 16), 1, n_steps=4)
    assert sde_model.training and all(p.grad is None for p in sde_model.parameters())
    sde_model.eval()


def test_fold_batchnorm_keeps_the_function_and_refolds_after_a_weight_change(sde_model):
    from nsde_ray.attribution import _folded, fold_batchnorm

    sde_model.eval()
    folded = fold_batchnorm(sde_model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in sde_model.modules())  # the original is untouched
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(images), sde_model(images), rtol=1e-4, atol=1e-5)
    cached = _folded(sde_model, images[:2], torch.contiguous_format)
    assert _folded(sde_model, images[:2], torch.contiguous_format) is cached
    with torch.no_grad():
        sde_model.fc.bias.add_(1.0)
    try:
        assert _folded(sde_model, images[:2], torch.contiguous_format) is not cached  # weights changed: folded again
    finally:
        with torch.no_grad():
            sde_model.fc.bias.sub_(1.0)


def test_a_model_that_folding_would_change_is_attributed_unfolded():
    from nsde_ray.attribution import _folded

    class BatchNormOnTheInput(nn.Module):  # bn1 normalises the input, not conv1's output
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))

        def forward(self, x):
            return self.head(self.conv1(self.bn1(x)))

    torch.manual_seed(0)
    model = BatchNormOnTheInput()
    model.bn1.running_mean.fill_(0.5)
    model.bn1.running_var.fill_(4.0)
    model.eval()
    with pytest.warns(RuntimeWarning, match="attributing with the unfolded model"):
        assert _folded(model, torch.randn(2, 3, 4, 4), torch.contiguous_format) is model
