"""One record per extensible concept: the sweep's objectives and the training noise modes.

Everything that lists objectives (the searcher, the front and its hypervolume, the plots, the tables,
the MLflow names, the dashboards) or noise modes (config validation, model building, the noise
energy, the search space, the papers' tables) reads these registries when it runs, so adding one is
registering one record (the attribution metrics have theirs in :mod:`nsde_ray.metric_registry`)::

    from nsde_ray.registry import OBJECTIVES, Objective
    OBJECTIVES["sensitivity_saliency"] = Objective("sensitivity_saliency", "min", 1.0, "Saliency max-sensitivity")

Imports nothing heavy (no torch), so configuration is validated before Ray or torch start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DIRECTIONS = ("max", "min")


@dataclass(frozen=True)
class Objective:
    """One objective of the search and the Pareto front.

    name: its metric name (MLflow, Tune, the front's rows). direction: ``max`` or ``min``.
    reference: the hypervolume reference point in the objective's own units (fixed, so hypervolumes
    compare across sweeps; a configuration beyond it adds nothing). label: for axes and tables.
    source: the evaluation metric copied under ``name`` (``sensitivity`` is ``sensitivity_ig``);
    ``None`` for a metric the training reports itself.
    """

    name: str
    direction: str
    reference: float
    label: str
    source: str | None = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"objective {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}")


ACCURACY = "val_accuracy"  # the objective every other one is plotted and compared against
OBJECTIVES: dict[str, Objective] = {
    ACCURACY: Objective(ACCURACY, "max", 0.0, "validation accuracy"),
    "sensitivity": Objective("sensitivity", "min", 1.0, "IG max-sensitivity (lower is better)", "sensitivity_ig"),
    "sic": Objective("sic", "max", 0.0, "IG SIC (higher is better)", "sic_ig"),
}


def objective_directions() -> tuple[tuple[str, str], ...]:
    """((name, direction), ...) of the registered objectives, in registration order."""
    return tuple((objective.name, objective.direction) for objective in OBJECTIVES.values())


def objective_names() -> tuple[str, ...]:
    return tuple(OBJECTIVES)


SITES = ("none", "blocks", "input", "loss")
ENERGY_RULES = ("zero", "unit", "map")


@dataclass(frozen=True)
class SearchParam:
    """One searched param of a noise mode: a flat :meth:`TrialConfig.to_params` name and its range.

    kind: ``float``, ``int`` or ``categorical``. bounds: the name of the :class:`SearchSpace` field
    holding its ``(low, high)`` range or its choices. log: search a float on a log scale.
    """

    name: str
    kind: str
    bounds: str
    log: bool = False


@dataclass(frozen=True)
class NoiseMode:
    """One way of training: where its perturbation goes, how much noise it is, how tables name it.

    site: ``none`` (the plain network), ``blocks`` (noise after every residual block), ``input``
    (noise on the input image) or ``loss`` (a changed training loss, no noise: the robust-training
    baselines). energy: the noise variance relative to Gaussian noise at the same sigma, by rule:
    ``zero``, ``unit`` or ``map`` (the mean squared multiplier of its attribution maps,
    :func:`nsde_ray.shaping.noise_energy`). label: short, for fronts, plots and verdicts;
    table_column: the papers' Table 1 header. params: what the sweep searches for it besides the
    learning rate, in the order the searcher suggests them. training_loss: ``"module:function"`` of its
    training loss, ``loss(model, images, labels, noise, mean, std, autocast) -> scalar`` (see
    :func:`nsde_ray.train.plain_loss`); empty for the plain cross-entropy.
    """

    name: str
    label: str
    table_column: str
    site: str
    energy: str
    params: tuple[SearchParam, ...] = ()
    training_loss: str = ""

    def __post_init__(self) -> None:
        if self.site not in SITES:
            raise ValueError(f"noise mode {self.name!r}: site must be one of {SITES}, got {self.site!r}")
        if self.energy not in ENERGY_RULES:
            raise ValueError(f"noise mode {self.name!r}: energy must be one of {ENERGY_RULES}, got {self.energy!r}")


SIGMA = SearchParam("noise_sigma", "float", "sigma_range")
SHAPING_PARAMS = (
    SearchParam("shaping_warmup_epochs", "int", "warmup_epochs"),
    SearchParam("shaping_refresh_every", "int", "refresh_every"),
    SearchParam("shaping_clip_percentile", "float", "clip_range"),
    SearchParam("shaping_method", "categorical", "shaping_methods"),
    SearchParam("shaping_energy", "categorical", "shaping_energies"),
)
NOISE_MODES: dict[str, NoiseMode] = {
    "none": NoiseMode("none", "ResNet", "Standard (ResNet)", "none", "zero"),
    "gaussian": NoiseMode("gaussian", "Gaussian SDE", "Noise (Gaussian SDE)", "blocks", "unit", (SIGMA,)),
    "attribution": NoiseMode(
        "attribution", "attribution SDE", "Attribution-driven noise", "blocks", "map", (SIGMA, *SHAPING_PARAMS)
    ),
    "input": NoiseMode("input", "input noise", "Input noise (baseline)", "input", "unit", (SIGMA,)),
    "fgsm": NoiseMode(
        "fgsm",
        "FGSM adversarial training",
        "FGSM training (baseline)",
        "loss",
        "zero",
        (
            SearchParam("noise_fgsm_epsilon", "float", "fgsm_epsilon_range"),
            SearchParam("noise_fgsm_step", "float", "fgsm_step_range"),
        ),
        "nsde_ray.robust_training:fgsm_training_loss",
    ),
    "gradreg": NoiseMode(
        "gradreg",
        "input-gradient penalty",
        "Gradient penalty (baseline)",
        "loss",
        "zero",
        (SearchParam("noise_gradreg_weight", "float", "gradreg_weight_range", log=True),),
        "nsde_ray.robust_training:gradreg_training_loss",
    ),
}


def noise_mode_names() -> tuple[str, ...]:
    return tuple(NOISE_MODES)


def noise_mode(name: str) -> NoiseMode:
    """The record of ``name``; ValueError naming the registered modes if there is none."""
    if name not in NOISE_MODES:
        raise ValueError(f"unknown noise mode {name!r}; choose one of: {', '.join(NOISE_MODES)}")
    return NOISE_MODES[name]


def injects_noise(name: str) -> bool:
    """Whether mode ``name`` adds noise in training (in the blocks or on the input), given a sigma > 0."""
    return noise_mode(name).site in ("blocks", "input")


def mode_label(name: str) -> str:
    """The mode's short label, or the name itself for a mode this process does not know."""
    return NOISE_MODES[name].label if name in NOISE_MODES else name


def effective_sigma(sigma: Any, noise_energy: float) -> float:
    """sigma * sqrt(noise_energy): the Gaussian sigma with the same noise energy; NaN where either is unknown."""
    try:
        return float(sigma) * math.sqrt(noise_energy)
    except (TypeError, ValueError):
        return math.nan


def front_params() -> tuple[str, ...]:
    """The params (flat names) that tell a front's configurations apart: the mode, every mode's searched
    params, the learning rate and the seeds per configuration."""
    names = ["noise_mode"]
    names += dict.fromkeys(param.name for mode in NOISE_MODES.values() for param in mode.params)
    return (*names, "lr", "seeds_per_config")


def unused_params(mode: str) -> set[str]:
    """The other modes' searched params that ``mode`` does not use (their values in its runs are defaults);
    ``noise_sigma`` is always used (0 for the modes without noise)."""
    own = {param.name for param in NOISE_MODES[mode].params} if mode in NOISE_MODES else set()
    return {name for name in front_params()[1:-2] if name not in own and name != SIGMA.name}
