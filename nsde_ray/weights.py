"""Initial weights of a trial (``TrainConfig.init_from``): read as plain tensors, checked key by key and shape by shape.

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

CHECKPOINT_FILE = "checkpoint.pt"  # the weights' file in a checkpoint directory (training checkpoint or exported model)
SHOWN = 3  # mismatching keys named in an error


class WeightsError(ValueError):
    """Initial weights that cannot be read, or that do not fit the model; the message names the mismatch."""


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict (``{key: tensor}``) in ``path``: a state-dict file, or a checkpoint's file or directory."""
    file = os.path.join(path, CHECKPOINT_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise WeightsError(f"init weights {file!r} not found: pass a state dict saved with torch.save, or a "
                           f"checkpoint directory holding {CHECKPOINT_FILE}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise WeightsError(f"init weights {file!r} cannot be read as plain tensors with torch.load(weights_only=True) "
                           f"(save model.state_dict(), not the model): {_first_sentence(err)}") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not (isinstance(state, dict) and state
            and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())):
        marker = " (it marks a diverged run: take an earlier checkpoint)" if isinstance(state, dict) \
            and state.get("diverged") else ""
        raise WeightsError(f"init weights {file!r} hold no state dict{marker}: expected {{name: tensor}} or a "
                           "checkpoint {'model': {name: tensor}, ...}")
    return state


def check_weights(state: dict[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """Raise :class:`WeightsError`, naming the first misshapen, missing and unexpected keys, unless ``state`` fits
    ``model`` (``what`` says whose weights, for the message)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [f"{key} {tuple(state[key].shape)} where the model has {tuple(expected[key].shape)}"
                 for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = [f"{label} {', '.join(keys[:SHOWN])}" + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
                for label, keys in (("shapes differ:", misshapen), ("missing keys:", missing),
                                    ("unexpected keys:", unexpected)) if keys]
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
        check_weights(state, model, f"--init-from {cfg.train.init_from!r} ({arch} on {cfg.data.dataset}: "
                                    f"{num_classes} classes, {in_channels}-channel images)")


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
