"""One image, one trained model: top-k prediction, attribution map and its max-sensitivity (ExplainIt!).

A trial's model is exported (:func:`export_model`) as one ``model.pt`` with the weights,
the config and what it takes to feed it an arbitrary image: class names, the normalisation, the
input size and a small DeepSHAP baseline distribution drawn from the training set. It loads
(:func:`load_model`) with ``torch.load(weights_only=True)``: nothing in the file is executed.

:func:`explain_image` computes, on the noise-free model (eval mode, as in the papers), the same
quantities :func:`nsde_ray.evaluate.evaluate` averages over a data set, for a single image.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from nsde_ray.attribution import attribution_map, check_applicable, eval_mode, ig_baseline, make_explainer
from nsde_ray.config import TrialConfig
from nsde_ray.data import DataSplits
from nsde_ray.metrics.sensitivity import max_sensitivity, uniform_perturbations
from nsde_ray.names import LEGACY_MODEL_FILE, MODEL_FILE
from nsde_ray.weights import load_tensors, model_from_state, weights_file

SHAP_BASELINES = 16
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024  # pixels: an exported model's input side (check_metadata)
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class ModelBundle:
    """A trained model (eval mode, CPU) and how to feed it: images (C, size, size) normalised by mean/std."""

    model: nn.Module
    config: TrialConfig
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    shap_baselines: torch.Tensor  # (K, C, size, size), normalised

    @property
    def in_channels(self) -> int:
        return len(self.mean)


@dataclass(frozen=True)
class Explanation:
    """What one model says about one image.

    top: the ``k`` most probable classes as (class name, softmax probability), best first.
    attribution: the signed map (H, W) of the predicted class, summed over channels.
    sensitivity: max-sensitivity of that map (NaN when every perturbation changed the prediction).
    kept_perturbations: how many of the perturbations kept the prediction.
    """

    top: list[tuple[str, float]]
    attribution: torch.Tensor
    sensitivity: float
    kept_perturbations: int


def export_model(checkpoint_dir: str, splits: DataSplits, out_dir: str, seed: int = 0) -> str:
    """Write a training checkpoint's weights and config, plus the data set's preprocessing, to ``out_dir``."""
    from nsde_ray.evaluate import training_sample
    from nsde_ray.train import load_checkpoint

    state = load_checkpoint(checkpoint_dir)
    baselines = training_sample(splits.train_unaugmented, SHAP_BASELINES, seed)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, MODEL_FILE)
    torch.save(
        {
            "model": state["model"],
            "config": state["config"],
            "epoch": state["epoch"],
            "num_classes": state["num_classes"],
            "in_channels": state["in_channels"],
            "class_names": list(splits.class_names),
            "mean": list(splits.mean),
            "std": list(splits.std),
            "image_size": splits.image_size,
            "shap_baselines": baselines.to(torch.float16),
        },
        path,
    )
    return path


def load_model(path: str) -> ModelBundle:
    """The :class:`ModelBundle` in ``path`` (the file, or the folder holding it), written by :func:`export_model`."""
    path = weights_file(path, (MODEL_FILE, LEGACY_MODEL_FILE))
    state = load_tensors(path)
    missing = {"model", "config", "class_names", "mean", "std", "image_size", "shap_baselines"} - set(state)
    if missing:
        raise ValueError(
            f"{path} is not an exported model (missing {', '.join(sorted(missing))}); "
            "it was written by an older version or is a training checkpoint"
        )
    check_metadata(state, path)
    model, cfg = model_from_state(state)
    return ModelBundle(
        model,
        cfg,
        tuple(state["class_names"]),
        tuple(state["mean"]),
        tuple(state["std"]),
        int(state["image_size"]),
        state["shap_baselines"].float(),
    )


def check_metadata(state: dict, path: str = "the model") -> None:
    """What an exported model says about its input, checked before anything is built from it; raises ValueError.

    image_size an integer in [:data:`MIN_IMAGE_SIZE`, :data:`MAX_IMAGE_SIZE`] (every uploaded image
    is resized to it: a huge one would exhaust memory), 1 or 3 input channels, between 1 and
    :data:`MAX_CLASSES` classes with one name each, mean and std one finite value per channel (std
    > 0), and DeepSHAP baselines of shape (K, channels, size, size).
    """

    def fail(what: str) -> None:
        raise ValueError(f"{path} has invalid metadata: {what}; it is damaged or not an exported model of this package")

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    size, channels, classes = state.get("image_size"), state.get("in_channels"), state.get("num_classes")
    if not integer(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        fail(f"image_size {size!r} is not an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] pixels")
    if channels not in (1, 3) or not integer(channels):
        fail(f"in_channels {channels!r} is not 1 or 3")
    if not integer(classes) or not 1 <= classes <= MAX_CLASSES:
        fail(f"num_classes {classes!r} is not an integer in [1, {MAX_CLASSES}]")
    names = state.get("class_names")
    if not isinstance(names, (list, tuple)) or len(names) != classes or not all(isinstance(n, str) for n in names):
        count = len(names) if isinstance(names, (list, tuple)) else names
        fail(f"class_names must be {classes} names, one per class, got {count!r}")
    for key in ("mean", "std"):
        values = state.get(key)
        if (
            not isinstance(values, (list, tuple))
            or len(values) != channels
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        ):
            fail(f"{key} must be {channels} finite numbers, one per input channel, got {values!r}")
    if not all(v > 0 for v in state["std"]):
        fail(f"std must be > 0, got {state['std']!r}")
    baselines = state.get("shap_baselines")
    if (
        not isinstance(baselines, torch.Tensor)
        or baselines.dim() != 4
        or tuple(baselines.shape[1:]) != (channels, size, size)
        or not 1 <= baselines.shape[0] <= 1024
    ):
        fail(
            f"shap_baselines must be a (K, {channels}, {size}, {size}) tensor, got "
            f"{tuple(baselines.shape) if isinstance(baselines, torch.Tensor) else type(baselines).__name__}"
        )


def prepare_image(image: Image.Image, bundle: ModelBundle) -> torch.Tensor:
    """Any PIL image -> pixels (C, size, size) in [0, 1]: grey or RGB as the model takes, the centre square resized."""
    image = image.convert("L" if bundle.in_channels == 1 else "RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((bundle.image_size,) * 2, Image.BILINEAR)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float() / 255.0
    size = bundle.image_size
    return pixels.view(size, size, bundle.in_channels).permute(2, 0, 1).contiguous()


def explain_image(
    bundle: ModelBundle,
    pixels: torch.Tensor,
    method: str = "ig",
    *,
    top_k: int = 5,
    n_steps: int = 32,
    n_perturbations: int = 10,
    radius: float = 0.02,
    nt_samples: int = 8,
    nt_stdev: float = 0.1,
    seed: int = 0,
) -> Explanation:
    """Explain ``pixels`` (C, H, W) in [0, 1] with ``method``; radius and nt_stdev in pixel units."""
    model = bundle.model
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    if pixels.shape != (bundle.in_channels, bundle.image_size, bundle.image_size):
        raise ValueError(
            f"pixels must be {(bundle.in_channels, bundle.image_size, bundle.image_size)} (C, H, W), "
            f"got {tuple(pixels.shape)}: use prepare_image"
        )
    image = (pixels.unsqueeze(0) - mean) / std
    check_applicable(model, method, image)
    with torch.no_grad(), eval_mode(model):
        probabilities = model(image).softmax(dim=1)[0]
    ranked = probabilities.argsort(descending=True)[:top_k]
    target = ranked[:1]
    black = ig_baseline(bundle.mean, bundle.std, "black").expand_as(image).contiguous()
    explain = make_explainer(
        model,
        method,
        baselines=bundle.shap_baselines if method == "deepshap" else black,
        n_steps=n_steps,
        nt_samples=nt_samples,
        nt_stdev=nt_stdev / float(std.mean()),
        internal_batch_size=64,
    )
    attributions = explain(image, target)
    deltas = uniform_perturbations(
        image.shape, n_perturbations, radius, bundle.std, torch.Generator().manual_seed(seed)
    )
    sensitivity = max_sensitivity(
        explain, model, image, target, deltas, keep_prediction=True, explanations=attributions
    )
    kept = _kept_perturbations(model, image, deltas, int(target))
    return Explanation(
        top=[(bundle.class_names[int(k)], float(probabilities[k])) for k in ranked],
        attribution=attribution_map(attributions)[0].detach(),
        sensitivity=float(sensitivity[0]),
        kept_perturbations=kept,
    )


def _kept_perturbations(model: nn.Module, image: torch.Tensor, deltas: torch.Tensor, target: int) -> int:
    with torch.no_grad(), eval_mode(model):
        return int((model(image + deltas[0]).argmax(dim=1) == target).sum())
