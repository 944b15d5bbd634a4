"""Attribution methods by name, over Captum, evaluated on the noise-free network as in the papers.

| name | Captum | notes |
| --- | --- | --- |
| ``saliency`` | ``Saliency`` | signed input gradient (``abs=False``) |
| ``ig`` | ``IntegratedGradients`` | ``n_steps`` Gauss-Legendre points, a baseline |
| ``ig_nt`` | ``NoiseTunnel(IntegratedGradients)`` | SmoothGrad: ``nt_samples`` noisy copies, std ``nt_stdev`` |
| ``deeplift`` | ``DeepLift`` | rescale rule, a baseline |
| ``deepshap`` | ``DeepLiftShap`` | DeepLIFT averaged over a baseline distribution |

Every method returns signed attributions shaped like the input, (B, C, H, W), in units of the
target logit (IG and DeepLIFT sum, approximately, to logit(x) - logit(baseline)).
:func:`attribution_map` reduces them to a (B, H, W) map, signed or absolute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from captum.attr import DeepLift, DeepLiftShap, IntegratedGradients, NoiseTunnel, Saliency
from torch import nn

METHODS = ("saliency", "ig", "ig_nt", "deeplift", "deepshap")
_NEEDS_SEPARATE_RELUS = ("deeplift", "deepshap")

Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class AttributionError(ValueError):
    """An attribution request that cannot work; the message says why and what to do."""


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (noise off, batch-norm running statistics), restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise AttributionError(f"unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}")


def check_applicable(model: nn.Module, method: str, example: torch.Tensor) -> None:
    """Fail clearly if ``method`` cannot give correct attributions on ``model``.

    DeepLIFT and DeepSHAP attach their rescale rule to ReLU modules: each must be its own module,
    used once per forward pass and not in place (torchvision's own blocks reuse one in-place
    ReLU). ``example`` is one input (1, C, H, W) used to trace the ReLU calls.
    """
    check_method(method)
    if method not in _NEEDS_SEPARATE_RELUS:
        return
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if any(relu.inplace for relu in relus):
        raise AttributionError(f"{method} needs every ReLU to be a separate, not-in-place module; this model has "
                               "in-place ReLUs: build it with nsde_ray.models.build_model")
    calls: dict[int, int] = {}
    hooks = [r.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1)) for r in relus]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if any(count > 1 for count in calls.values()):
        raise AttributionError(f"{method} needs every ReLU module to be used once per forward pass; this model "
                               "reuses one (as torchvision's blocks do): build it with nsde_ray.models.build_model")


def make_explainer(model: nn.Module, method: str, *, baselines: torch.Tensor | None = None, n_steps: int = 32,
                   nt_samples: int = 8, nt_stdev: float = 0.1, internal_batch_size: int = 512) -> Explainer:
    """A function ``(inputs (B, C, H, W), target (B,)) -> attributions (B, C, H, W)``.

    baselines: for ``ig`` and ``deeplift`` one reference input (1, C, H, W) broadcast over the
    batch (``None``: zeros in the model's input space); for ``deepshap`` a distribution
    (N, C, H, W), required. nt_stdev is the SmoothGrad noise std in the model's input units.
    The model is switched to eval mode for each call, so no training noise is injected.
    """
    check_method(method)
    if method == "deepshap" and (baselines is None or baselines.ndim != 4 or len(baselines) < 2):
        raise AttributionError("deepshap needs a baseline distribution: a tensor (N, C, H, W) with N >= 2 "
                               "reference inputs, e.g. a few training images")
    if method == "saliency":
        algorithm, options = Saliency(model), {"abs": False}
    elif method == "ig":
        algorithm, options = IntegratedGradients(model), {"n_steps": n_steps, "internal_batch_size": internal_batch_size}
    elif method == "ig_nt":
        algorithm = NoiseTunnel(IntegratedGradients(model))
        options = {"nt_type": "smoothgrad", "nt_samples": nt_samples, "stdevs": nt_stdev, "n_steps": n_steps,
                   "internal_batch_size": internal_batch_size}
    elif method == "deeplift":
        algorithm, options = DeepLift(model), {}
    else:
        algorithm, options = DeepLiftShap(model), {}

    def explain(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kwargs = dict(options)
        if method in ("ig", "ig_nt", "deeplift"):
            kwargs["baselines"] = _broadcast_baseline(baselines, inputs)
        elif method == "deepshap":
            kwargs["baselines"] = baselines.to(inputs.device)
        with eval_mode(model):
            return algorithm.attribute(inputs, target=target, **kwargs).detach()

    return explain


def _broadcast_baseline(baseline: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(inputs)
    if baseline.shape[1:] != inputs.shape[1:]:
        raise AttributionError(f"baseline shape {tuple(baseline.shape)} does not match inputs {tuple(inputs.shape)}")
    return baseline.to(inputs.device).expand_as(inputs).contiguous()


def attribute(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, method: str, **options) -> torch.Tensor:
    """Signed attributions (B, C, H, W) of ``target`` (B,) for ``inputs`` (B, C, H, W); options as :func:`make_explainer`."""
    if inputs.ndim != 4:
        raise AttributionError(f"inputs must be images (B, C, H, W), got shape {tuple(inputs.shape)}")
    check_applicable(model, method, inputs)
    return make_explainer(model, method, **options)(inputs, target)


def attribution_map(attributions: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): the sum over channels, or the sum of absolute values over channels."""
    return (attributions.abs() if absolute else attributions).sum(dim=1)
