"""Weights on disk: loading checkpoints and exported models, and a trial's initial weights (``TrainConfig.init_from``).

Every file is read with :func:`load_tensors` (``torch.load(weights_only=True)``): nothing in it is
executed. :func:`model_from_state` builds the model of a training checkpoint or an exported model.

The weights are a state dict saved with ``torch.save`` (torchvision's own included: the models
load them unchanged) or one of this package's checkpoints, a training checkpoint or an exported
model (``{"model": state dict, ...}``), given as the file or the directory holding it. They load
with ``torch.load(weights_only=True)``: nothing in the file is executed. The command line checks
them against the trial's model before Ray starts (:func:`check_init_weights`); each DDP worker of
a run that does not resume loads them (:func:`load_init_weights`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable

import torch
from torch import nn

from nsde_ray.config import TrialConfig
from nsde_ray.models import build_model
from nsde_ray.names import CHECKPOINT_FILE, LEGACY_MODEL_FILE, MODEL_FILE

SHOWN = 3  # mismatching keys named in an error


class WeightsError(ValueError):
    """Initial weights that cannot be read, or that do not fit the model; the message names the mismatch."""


def load_tensors(file: str) -> dict:
    """The contents of a file written by ``torch.save``, on the CPU, read as plain data (no code runs)."""
    return torch.load(file, map_location="cpu", weights_only=True)


def weights_file(path: str, names: tuple[str, ...] = (CHECKPOINT_FILE, MODEL_FILE, LEGACY_MODEL_FILE)) -> str:
    """``path`` itself, or for a directory the first of ``names`` in it (the first name if none is there)."""
    if not os.path.isdir(path):
        return path
    return next(
        (os.path.join(path, name) for name in names if os.path.isfile(os.path.join(path, name))),
        os.path.join(path, names[0]),
    )


def model_from_state(state: dict) -> tuple[nn.Module, TrialConfig]:
    """The model (eval mode, CPU) and config of a training checkpoint or an exported model.

    ``state`` holds ``config`` (:meth:`TrialConfig.to_dict`), ``num_classes``, ``in_channels`` and
    ``model`` (the state dict).
    """
    cfg = TrialConfig.from_dict(state["config"])
    model = build_model(cfg.model.arch, state["num_classes"], state["in_channels"], cfg.noise)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict (``{key: tensor}``) in ``path``: a state-dict file, or a checkpoint's (or exported
    model's) file or directory."""
    file = weights_file(path)
    if not os.path.isfile(file):
        raise WeightsError(
            f"init weights {file!r} not found: pass a state dict saved with torch.save, or a "
            f"checkpoint directory holding {CHECKPOINT_FILE}"
        )
    try:
        state = load_tensors(file)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise WeightsError(
            f"init weights {file!r} cannot be read as plain tensors with torch.load(weights_only=True) "
            f"(save model.state_dict(), not the model): {_first_sentence(err)}"
        ) from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not (
        isinstance(state, dict)
        and state
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())
    ):
        marker = (
            " (it marks a diverged run: take an earlier checkpoint)"
            if isinstance(state, dict) and state.get("diverged")
            else ""
        )
        raise WeightsError(
            f"init weights {file!r} hold no state dict{marker}: expected {{name: tensor}} or a "
            "checkpoint {'model': {name: tensor}, ...}"
        )
    return state


def check_weights(state: dict[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """Raise :class:`WeightsError`, naming the first misshapen, missing and unexpected keys, unless ``state`` fits
    ``model`` (``what`` says whose weights, for the message)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [
        f"{key} {tuple(state[key].shape)} where the model has {tuple(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label} {', '.join(keys[:SHOWN])}" + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
        for label, keys in (("shapes differ:", misshapen), ("missing keys:", missing), ("unexpected keys:", unexpected))
        if keys
    ]
    if problems:
        raise WeightsError(f"{what} do not fit the model: " + "; ".join(problems))


def load_init_weights(path: str, model: nn.Module) -> None:
    """Load the weights in ``path`` into ``model`` (strict: every key, every shape)."""
    state = read_weights(path)
    check_weights(state, model, f"init weights {path!r}")
    model.load_state_dict(state, strict=True)


def check_init_weights(cfg: TrialConfig, archs: Iterable[str]) -> None:
    """Fail fast, on the driver, unless ``cfg.train.init_from`` fits the model of every arch in ``archs``
    on ``cfg``'s data set (its classes and channels). Raises :class:`WeightsError`."""
    from nsde_ray.models import build_model

    state = read_weights(cfg.train.init_from)
    num_classes, in_channels = dataset_shape(cfg)
    for arch in archs:
        model = build_model(arch, num_classes, in_channels, cfg.noise)
        check_weights(
            state,
            model,
            f"--init-from {cfg.train.init_from!r} ({arch} on {cfg.data.dataset}: "
            f"{num_classes} classes, {in_channels}-channel images)",
        )


def _first_sentence(err: Exception) -> str:
    """The gist of torch.load's error (for pickled objects, the unpickler's reason, not its advice to unpickle)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    reason = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0])
    return reason.split(". ")[0]


def dataset_shape(cfg: TrialConfig) -> tuple[int, int]:
    """(num_classes, in_channels) of the trial's data set, without reading image files.

    CIFAR's are fixed; image folders count the class folders of ``train/``; digits and synthetic
    data are built (in memory, well under a second).
    """
    from nsde_ray.data import build_datasets

    data = cfg.data
    if data.dataset in ("cifar10", "cifar100"):
        return (10 if data.dataset == "cifar10" else 100), 3
    if data.dataset in ("imagenet", "imagefolder"):
        return sum(entry.is_dir() for entry in os.scandir(os.path.join(data.data_dir, "train"))), 3
    splits = build_datasets(data)
    return splits.num_classes, splits.in_channels
