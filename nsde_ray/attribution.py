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

Fast path: :func:`integrated_gradients` and :func:`saliency` (and :func:`smoothgrad` over the former for
``ig_nt``) compute the same quantities
as Captum's ``IntegratedGradients`` (same Gauss-Legendre points and weights) and ``Saliency`` without
Captum's copies, with path points of several images and steps in one large model call, batch norm
folded into the convolutions, optionally under bf16 autocast and in channels_last.
``make_explainer(..., fast=True)`` uses them; in fp32 they equal Captum's to float rounding (tested). Under bf16
autocast the gradients carry bf16 rounding (about 1% of the map); measure what that costs with
:func:`completeness_error`.
"""

from __future__ import annotations

import copy
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from captum.attr import DeepLift, DeepLiftShap, IntegratedGradients, NoiseTunnel, Saliency
from torch import nn

from nsde_ray.names import METHODS

BASELINES = ("black", "mean")
STOCHASTIC_METHODS = ("ig_nt",)  # draw from the global torch RNG at every call; the others are deterministic
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
        raise AttributionError(
            f"{method} needs every ReLU to be a separate, not-in-place module; this model has "
            "in-place ReLUs: build it with nsde_ray.models.build_model"
        )
    calls: dict[int, int] = {}
    hooks = [r.register_forward_hook(lambda m, i, o: calls.__setitem__(id(m), calls.get(id(m), 0) + 1)) for r in relus]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if any(count > 1 for count in calls.values()):
        raise AttributionError(
            f"{method} needs every ReLU module to be used once per forward pass; this model "
            "reuses one (as torchvision's blocks do): build it with nsde_ray.models.build_model"
        )


def make_explainer(
    model: nn.Module,
    method: str,
    *,
    baselines: torch.Tensor | None = None,
    n_steps: int = 32,
    nt_samples: int = 8,
    nt_stdev: float = 0.1,
    internal_batch_size: int = 512,
    fast: bool = False,
    amp: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    stem_gradient: bool = True,
    fold_bn: bool = True,
) -> Explainer:
    """A function ``(inputs (B, C, H, W), target (B,)) -> attributions (B, C, H, W)``.

    baselines: for ``ig`` and ``deeplift`` one reference input (1, C, H, W), or one colour
    (1, C, 1, 1) such as :func:`ig_baseline`'s, broadcast over the batch (``None``: zeros in the
    model's input space); for ``deepshap`` a distribution
    (N, C, H, W), required. nt_stdev is the SmoothGrad noise std in the model's input units.
    The model is switched to eval mode for each call, so no training noise is injected.

    fast: for ``ig``, ``ig_nt`` and ``saliency``, :func:`integrated_gradients` (under :func:`smoothgrad`
    for ``ig_nt``) / :func:`saliency` instead of Captum, with ``amp`` (bf16 autocast, on CUDA only), the
    model's ``memory_format``, ``stem_gradient`` and ``fold_bn`` (see :func:`integrated_gradients`);
    attributions come back float32 and contiguous. Other methods ignore these options.
    """
    check_method(method)
    if fast and method in ("ig", "ig_nt", "saliency"):
        fast_options = dict(
            internal_batch_size=internal_batch_size,
            amp=amp,
            memory_format=memory_format,
            stem_gradient=stem_gradient,
            fold_bn=fold_bn,
        )

        def explain_fast(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if method == "saliency":
                return saliency(model, inputs, target, **fast_options)
            return integrated_gradients(model, inputs, target, baselines, n_steps=n_steps, **fast_options)

        return smoothgrad(explain_fast, nt_samples, nt_stdev) if method == "ig_nt" else explain_fast

    if method == "deepshap" and (baselines is None or baselines.ndim != 4 or len(baselines) < 2):
        raise AttributionError(
            "deepshap needs a baseline distribution: a tensor (N, C, H, W) with N >= 2 "
            "reference inputs, e.g. a few training images"
        )
    if method == "saliency":
        algorithm, options = Saliency(model), {"abs": False}
    elif method == "ig":
        algorithm, options = (
            IntegratedGradients(model),
            {"n_steps": n_steps, "internal_batch_size": internal_batch_size},
        )
    elif method == "ig_nt":
        algorithm = NoiseTunnel(IntegratedGradients(model))
        options = {
            "nt_type": "smoothgrad",
            "nt_samples": nt_samples,
            "stdevs": nt_stdev,
            "n_steps": n_steps,
            "internal_batch_size": internal_batch_size,
        }
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


def smoothgrad(explain: Explainer, nt_samples: int, stdev: float) -> Explainer:
    """SmoothGrad over ``explain``: per input, the mean attribution (B, C, H, W) of ``nt_samples`` noisy copies.

    The noise, N(0, ``stdev``^2) in input units, is drawn from the global torch RNG, one
    (B * nt_samples, C, H, W) draw per call with each input's copies adjacent, as Captum's
    ``NoiseTunnel`` draws it: from the same RNG state both see the same noisy inputs.
    """

    def explain_noisy(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        copies = inputs.repeat_interleave(nt_samples, dim=0)
        noise = torch.normal(0, torch.tensor(stdev, device=inputs.device).repeat(copies.shape))
        targets = _targets(target, len(inputs), inputs.device).repeat_interleave(nt_samples)
        attributions = explain(copies + noise, targets)
        return attributions.view(len(inputs), nt_samples, *inputs.shape[1:]).sum(dim=1) / nt_samples

    return explain_noisy


def ig_baseline(mean: tuple[float, ...], std: tuple[float, ...], kind: str = "black") -> torch.Tensor:
    """The reference input of IG and DeepLIFT, (1, C, 1, 1) in normalised units, for shaping and evaluation alike.

    ``black``: every pixel 0 in pixel units, -mean / std once normalised; the papers' baseline
    x_b = 0 read as a black image in pixel space. ``mean``: the data set's mean colour, 0 once
    normalised. ``mean``, ``std``: the data set's per-channel normalisation (``DataSplits``).
    """
    if kind not in BASELINES:
        raise AttributionError(f"unknown baseline {kind!r}; choose one of: {', '.join(BASELINES)}")
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return -mean_t / std_t if kind == "black" else torch.zeros_like(mean_t)


def _broadcast_baseline(baseline: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor:
    """``baseline`` (1 or B, C, H, W), or (1, C, 1, 1) for one colour, expanded to ``inputs`` (B, C, H, W)."""
    if baseline is None:
        return torch.zeros_like(inputs)
    if baseline.shape[1:] not in (inputs.shape[1:], (inputs.shape[1], 1, 1)):
        raise AttributionError(f"baseline shape {tuple(baseline.shape)} does not match inputs {tuple(inputs.shape)}")
    return baseline.to(device=inputs.device, dtype=inputs.dtype).expand_as(inputs).contiguous()


def attribute(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, method: str, **options) -> torch.Tensor:
    """Signed attributions (B, C, H, W) of ``target`` (B,) for ``inputs`` (B, C, H, W); options as
    :func:`make_explainer`."""
    if inputs.ndim != 4:
        raise AttributionError(f"inputs must be images (B, C, H, W), got shape {tuple(inputs.shape)}")
    check_applicable(model, method, inputs)
    return make_explainer(model, method, **options)(inputs, target)


def attribution_map(attributions: torch.Tensor, absolute: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): the sum over channels, or the sum of absolute values over channels."""
    return (attributions.abs() if absolute else attributions).sum(dim=1)


def gauss_legendre(n_steps: int) -> tuple[list[float], list[float]]:
    """(alphas, weights): Captum's ``gausslegendre`` rule on [0, 1] (weights sum to 1)."""
    if n_steps < 1:
        raise AttributionError(f"n_steps must be >= 1, got {n_steps}")
    points, weights = np.polynomial.legendre.leggauss(n_steps)
    return (0.5 * (1.0 + points)).tolist(), (0.5 * weights).tolist()


def autocast_options(device: torch.device, amp: bool) -> dict:
    """``torch.autocast`` keyword arguments: bf16 when ``amp`` and on CUDA, else disabled."""
    return dict(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm2d that follows a Conv2d folded into the convolution.

    Folded pairs: ``convK`` / ``bnK`` attributes of one module (torchvision's and our ResNet blocks
    and stems) and consecutive (Conv2d, BatchNorm2d) in an ``nn.Sequential`` (downsample paths). In
    eval mode batch norm is an affine map per channel, so the copy computes the same function; the
    fast attribution path checks that on the inputs before using it (:func:`_folded`).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        names = list(module._modules)
        if isinstance(module, nn.Sequential):
            pairs = list(zip(names, names[1:]))
        else:
            pairs = [(name, "bn" + name[4:]) for name in names if name.startswith("conv")]
        for conv_name, bn_name in pairs:
            conv, bn = module._modules.get(conv_name), module._modules.get(bn_name)
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.running_mean is not None
                and bn.num_features == conv.out_channels
            ):
                module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
    return folded


_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (state key, folded copy or None)


def _folded(model: nn.Module, probe: torch.Tensor, memory_format: torch.memory_format) -> nn.Module:
    """``fold_batchnorm(model)``, cached until a parameter or buffer of ``model`` changes; ``model`` itself if
    folding does not reproduce its eval-mode output on ``probe`` (a model wired unlike a ResNet)."""
    key = tuple((t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))
    key += (memory_format,)
    cached = _FOLDED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1] or model
    folded = fold_batchnorm(model).to(memory_format=memory_format)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:  # compare in true fp32: TF32 rounding alone moves a deep random network's logits by a few percent
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with torch.no_grad(), eval_mode(model):
            reference = model(probe.float()).float()
            ok = torch.allclose(
                folded(probe.float()).float(), reference, rtol=0.0, atol=1e-2 * reference.abs().max().item() + 1e-5
            )
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    if not ok:
        warnings.warn(
            "fold_batchnorm changed this model's output; attributing with the unfolded model",
            RuntimeWarning,
            stacklevel=3,
        )
    _FOLDED[model] = (key, folded if ok else None)
    return folded if ok else model


def _stem_conv(model: nn.Module) -> nn.Conv2d | None:
    """The model's first ``Conv2d`` (the stem of our ResNets), if its input gradient can be formed by hand."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module if module.padding_mode == "zeros" and isinstance(module.padding, tuple) else None
    return None


def _target_gradients(
    model: nn.Module, points: torch.Tensor, target: torch.Tensor, autocast: dict, stem: nn.Conv2d | None = None
) -> torch.Tensor:
    """d logit_target / d points for a batch of points (N, C, H, W), float32; no parameter gradients are formed.

    stem: the convolution that reads the input. Autograd then stops at its output and the last step,
    the stem's input gradient, is one explicit transposed convolution in the contiguous layout: in
    channels_last, cuDNN's input-gradient kernels for a 3-channel input are slow (on an H100 they
    cost more than the rest of the backward pass). Same result, up to float rounding. A model whose
    first convolution does not read the input directly takes plain autograd.
    """
    captured: dict[str, torch.Tensor] = {}
    handle = None
    if stem is not None:

        def cut(module, args, output):
            if args[0] is points:
                captured["output"] = output.detach().requires_grad_()
                return captured["output"]
            return None

        handle = stem.register_forward_hook(cut)
    else:
        points = points.detach().requires_grad_()
    try:
        with torch.autocast(**autocast):
            logits = model(points)
    finally:
        if handle is not None:
            handle.remove()
    selected = logits.float().gather(1, target.view(-1, 1)).sum()
    if stem is None:
        (grad,) = torch.autograd.grad(selected, points)
        return grad.float()
    if "output" not in captured:  # the stem did not read the input itself
        return _target_gradients(model, points, target, autocast, None)
    (grad_output,) = torch.autograd.grad(selected, captured["output"])
    grad_output = grad_output.contiguous()
    grad = torch.nn.grad.conv2d_input(
        points.shape,
        stem.weight.detach().to(grad_output.dtype).contiguous(),
        grad_output,
        stride=stem.stride,
        padding=stem.padding,
        dilation=stem.dilation,
        groups=stem.groups,
    )
    return grad.float()


def _targets(target: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    target = torch.as_tensor(target, device=device, dtype=torch.long)
    return target.expand(batch) if target.ndim == 0 else target


def _prepared(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    amp: bool,
    memory_format: torch.memory_format,
    stem_gradient: bool,
    fold_bn: bool,
):
    """What both fast methods start from: (model to differentiate, inputs (B, C, H, W) as float32 or wider in
    ``memory_format``, targets (B,), autocast options, stem convolution or None)."""
    target = _targets(target, len(inputs), inputs.device)
    x = inputs.detach().to(torch.promote_types(inputs.dtype, torch.float32)).contiguous(memory_format=memory_format)
    if fold_bn:
        model = _folded(model, x[:2], memory_format)
    return model, x, target, autocast_options(inputs.device, amp), _stem_conv(model) if stem_gradient else None


def integrated_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    baselines: torch.Tensor | None = None,
    *,
    n_steps: int = 50,
    internal_batch_size: int = 512,
    amp: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    stem_gradient: bool = True,
    fold_bn: bool = True,
) -> torch.Tensor:
    """IG of ``target`` (B,) for ``inputs`` (B, C, H, W): (x - b) * sum_k w_k grad f(b + a_k (x - b)).

    The same Gauss-Legendre points a_k and weights w_k as Captum's default. Path points go to the
    model ``internal_batch_size`` at a time (several steps of every image per call when the batch is
    smaller than that), in ``memory_format``, under bf16 autocast if ``amp`` on CUDA. Gradients are
    accumulated in float32. Returns float32 (B, C, H, W), contiguous. baselines: (1, C, H, W),
    (1, C, 1, 1) or (B, C, H, W); ``None`` = zeros. stem_gradient: form the gradient through the
    model's first convolution by hand (see :func:`_target_gradients`). fold_bn: differentiate a copy of the model
    with batch norm folded into the convolutions (:func:`fold_batchnorm`; cached per model until its
    weights change), which saves the batch-norm passes forward and backward.
    """
    if inputs.ndim != 4:
        raise AttributionError(f"inputs must be images (B, C, H, W), got shape {tuple(inputs.shape)}")
    batch = len(inputs)
    model, x, target, autocast, stem = _prepared(model, inputs, target, amp, memory_format, stem_gradient, fold_bn)
    base = _broadcast_baseline(baselines, x).contiguous(memory_format=memory_format)
    diff = x - base
    alphas, weights = gauss_legendre(n_steps)
    total = torch.zeros_like(x)
    with eval_mode(model), torch.enable_grad():
        if batch >= internal_batch_size:  # one step of a slice of the batch per call
            for alpha, weight in zip(alphas, weights):
                for start in range(0, batch, internal_batch_size):
                    rows = slice(start, start + internal_batch_size)
                    grad = _target_gradients(
                        model, torch.add(base[rows], diff[rows], alpha=alpha), target[rows], autocast, stem
                    )
                    total[rows].add_(grad, alpha=weight)
        else:  # several steps of the whole batch per call
            per_call = max(1, internal_batch_size // batch)
            for first in range(0, n_steps, per_call):
                steps = range(first, min(first + per_call, n_steps))
                points = torch.cat([torch.add(base, diff, alpha=alphas[k]) for k in steps])
                grad = _target_gradients(
                    model, points.contiguous(memory_format=memory_format), target.repeat(len(steps)), autocast, stem
                )
                for i, k in enumerate(steps):
                    total.add_(grad[i * batch : (i + 1) * batch], alpha=weights[k])
    return (total * diff).contiguous()


def saliency(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    *,
    internal_batch_size: int = 512,
    amp: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    stem_gradient: bool = True,
    fold_bn: bool = True,
) -> torch.Tensor:
    """Signed input gradient of ``target`` (Captum's ``Saliency(abs=False)``), float32 (B, C, H, W), contiguous.

    Options as :func:`integrated_gradients`.
    """
    model, x, target, autocast, stem = _prepared(model, inputs, target, amp, memory_format, stem_gradient, fold_bn)
    with eval_mode(model), torch.enable_grad():
        grads = [
            _target_gradients(
                model, x[s : s + internal_batch_size], target[s : s + internal_batch_size], autocast, stem
            )
            for s in range(0, len(x), internal_batch_size)
        ]
    return torch.cat(grads).contiguous()


def completeness_error(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | int,
    attributions: torch.Tensor,
    baselines: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per image |sum(A) - (f(x) - f(b))| / |f(x) - f(b)|, f the target logit in float32 (IG's completeness axiom).

    A single baseline (one row, or ``None``) goes through the model once, for every image.
    """
    target = _targets(target, len(inputs), inputs.device)
    x = inputs.float()
    base = _broadcast_baseline(baselines, x[:1] if baselines is None or len(baselines) == 1 else x)
    with torch.no_grad(), eval_mode(model):
        base_logits = model(base).float().expand(len(x), -1)
        gap = (model(x).float().gather(1, target.view(-1, 1)) - base_logits.gather(1, target.view(-1, 1)))[:, 0]
    total = attributions.float().flatten(1).sum(dim=1)
    return (total - gap).abs() / gap.abs().clamp_min(1e-12)
