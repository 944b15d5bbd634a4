"""Typed configuration of one training trial, validated when it is built.

Every section is a frozen dataclass whose ``__post_init__`` rejects a value that cannot work with a
:class:`ConfigError` that says how to fix it, so a bad flag fails on the driver before Ray starts.
A :class:`TrialConfig` travels to Ray workers as a plain dict (:meth:`TrialConfig.to_dict`) and is
logged to MLflow as flat params (:meth:`TrialConfig.to_params`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nsde_ray.names import ARCHS, METHODS, SHAPING_METHODS
from nsde_ray.registry import injects_noise, noise_mode_names
from nsde_ray.uncertainty import BAND

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "imagefolder", "synthetic")
DATASETS_ON_DISK = ("cifar10", "cifar100", "imagenet", "imagefolder")
AUGMENTATIONS = ("auto", "cifar", "imagenet", "none")
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("none", "cosine", "step", "plateau")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
RESIDENT_DATA = ("auto", "off")  # TrainConfig.resident_data
SHAPING_ENERGIES = ("raw", "preserve")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says what to do instead."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")


def _positive_int(name: str, value: int) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{name} must be an integer >= 1, got {value!r}",
    )


def _finite_at_least(name: str, value: float, low: float) -> None:
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low,
        f"{name} must be a finite number >= {low}, got {value!r}",
    )


def check_name(name: object) -> None:
    """A sweep (or paper-tables grid) name is one directory in the storage and an MLflow experiment.

    Refused with a :class:`ConfigError`: anything but a non-empty string, ``.`` and ``..``, path
    separators (``/``, ``\\``), control characters, and leading or trailing whitespace, so that a name
    can never point outside its storage or hide in a listing.
    """
    _require(isinstance(name, str) and name != "", f"the sweep name (--name) must be a non-empty name, got {name!r}")
    _require(
        name not in (".", ".."),
        f"the sweep name (--name) cannot be {name!r}: it names a directory of the storage itself or its parent",
    )
    _require(
        "/" not in name and "\\" not in name,
        f"the sweep name (--name) must not contain path separators ('/' or '\\'), got {name!r}",
    )
    _require(
        not any(ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xA0 for c in name),
        f"the sweep name (--name) must not contain control characters, got {name!r}",
    )
    _require(name == name.strip(), f"the sweep name (--name) must not start or end with whitespace, got {name!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build.

    arch: a name from :data:`nsde_ray.names.ARCHS`: small CIFAR-style nets
    (``cifar_resnet8`` ...) for 8-32 px inputs or torchvision builders (``resnet50`` ...).
    """

    arch: str = "cifar_resnet8"

    def __post_init__(self) -> None:
        _one_of("arch", self.arch, ARCHS)


# The largest noise sigma a config accepts. sigma is the noise std relative to the block output's own std,
# so at 10 every block's output is 99% noise by variance; the papers use 0.5 and the sweep searches [0, 1].
MAX_SIGMA = 10.0
SIGMA_REASON = (
    f"sigma is the noise std relative to each block output's own std, so sigma {MAX_SIGMA:g} already "
    "drowns the signal in noise 100 times its variance and such a trial can only diverge or learn "
    "nothing (the papers use 0.5; the sweep searches 0 to 1)"
)


@dataclass(frozen=True)
class NoiseConfig:
    """Noise N(i) injected after every residual block (smoother-attributions paper, eq. 5).

    mode: a registered mode (:data:`nsde_ray.registry.NOISE_MODES`): ``none`` (plain ResNet, a neural
    ODE), ``gaussian`` (Brownian), ``attribution`` (Gaussian scaled per sample and location by an
    attribution map), ``input`` (no noise in the blocks; the same normalised Gaussian noise added to
    the input image only: the baseline of plain noise augmentation), or the robust-training baselines
    without noise, ``fgsm`` (FGSM adversarial training with a random start, radius ``fgsm_epsilon`` and
    step ``fgsm_step``, both L-infinity in pixel units, images in [0, 1], the scale of the evaluation's
    ``sensitivity_radius``) and ``gradreg`` (cross-entropy plus ``gradreg_weight`` times the squared L2
    norm of each image's loss gradient in pixel units), :mod:`nsde_ray.robust_training`.
    sigma: normalised magnitude; the noise std is ``sigma * std(block output)`` per sample,
    so 0.5 means the same in every block and architecture (``input``: ``sigma * std(image)``,
    the per-sample std of the normalised image over (C, H, W)). Unitless, in [0, :data:`MAX_SIGMA`].
    """

    mode: str = "gaussian"
    sigma: float = 0.5
    fgsm_epsilon: float = 0.02
    fgsm_step: float = 0.025
    gradreg_weight: float = 0.1

    def __post_init__(self) -> None:
        _one_of("noise mode", self.mode, noise_mode_names())
        _finite_at_least("noise sigma", self.sigma, 0.0)
        _require(
            self.sigma <= MAX_SIGMA,
            f"noise sigma {self.sigma!r} is above {MAX_SIGMA:g}, the most it may be: {SIGMA_REASON}",
        )
        _finite_at_least("noise fgsm_epsilon (pixel units)", self.fgsm_epsilon, 0.0)
        _require(
            self.fgsm_epsilon <= 1.0,
            f"noise fgsm_epsilon is an L-infinity radius in pixel units (images in "
            f"[0, 1]): at most 1, got {self.fgsm_epsilon!r}",
        )
        _finite_at_least("noise fgsm_step (pixel units)", self.fgsm_step, 0.0)
        _finite_at_least("noise gradreg_weight", self.gradreg_weight, 0.0)

    @property
    def active(self) -> bool:
        """Whether any noise is injected in training."""
        return injects_noise(self.mode) and self.sigma > 0


@dataclass(frozen=True)
class ShapingConfig:
    """Attribution-driven noise shaping (shaping paper, figure 2), used when the noise mode is ``attribution``.

    Training starts with ``warmup_epochs`` of plain Gaussian noise. From then on, every
    ``refresh_every`` epochs (or optimizer steps, per ``refresh_unit``) each worker recomputes the
    attribution maps A(x) of its own training shard with the current model in eval mode (noise
    off), by ``method`` (``ig`` with ``ig_steps`` Gauss-Legendre points, or the cheaper
    ``saliency``). IG's baseline is evaluation's default: a black image (the papers' x_b = 0 read
    in pixel space, -mean/std in normalised units; :func:`nsde_ray.attribution.ig_baseline`).
    Maps are taken on each image's evaluation view and cropped and flipped with the sample in
    every training batch (:func:`nsde_ray.augment.apply_geometry`). Each map is clipped at the
    ``clip_percentile`` of its |values| and divided by that value, giving Â(x) in [-1, 1]; the
    noise of a sample is scaled per location by ``blend + (1 - blend) * |Â(x)|`` (Σ_next = Σ Â(x);
    the noise is symmetric, so only |Â| matters). Maps are cached per sample at ``map_size`` pixels
    (smaller images keep their size). ``batch_size`` is the number of path points per attribution
    call (64 is fastest on CPU caches; raise it on a GPU). A full refresh with IG costs about
    ``ig_steps`` x 2/3 of a training epoch.

    ``method = "training_gradient"`` has no refresh pass (``refresh_every``, ``ig_steps`` and
    ``batch_size`` do not apply): every training step also takes the gradient of the batch's loss
    with respect to its input images (one more backward through the stem), and that map, clipped and
    normalised as above and mapped back through the sample's crop and flip, becomes the sample's map
    for its next visit. Maps are collected from the last warm-up epoch on (from the first epoch
    without warm-up), so shaped noise starts when it would with a refresh; they come from the
    training view with noise on, not from the evaluation view with noise off.

    ``energy``: ``raw`` keeps the multipliers as they are (mostly below 1: with the 99th-percentile
    clip their mean square is 0.07 to 0.09 on digits, so shaped noise is also much less noise than Gaussian at
    the same sigma); ``preserve`` rescales each sample's map so that its mean square is 1 (the
    noise variance of Gaussian noise at the same sigma, redistributed by the map), then caps it at
    ``max_multiplier`` (>= 1) so that hot spots cannot wreck training. The training metric
    ``noise_energy`` reports the amount either way.
    """

    warmup_epochs: int = 1
    refresh_every: int = 2
    refresh_unit: str = "epochs"
    method: str = "ig"
    ig_steps: int = 4
    clip_percentile: float = 99.0
    blend: float = 0.0
    map_size: int = 32
    batch_size: int = 64
    energy: str = "raw"
    max_multiplier: float = 4.0

    def __post_init__(self) -> None:
        _require(
            isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0,
            f"shaping warmup_epochs must be an integer >= 0, got {self.warmup_epochs!r}",
        )
        _positive_int("shaping refresh_every", self.refresh_every)
        _one_of("shaping refresh_unit", self.refresh_unit, ("epochs", "steps"))
        _one_of("shaping method", self.method, SHAPING_METHODS)
        _positive_int("shaping ig_steps", self.ig_steps)
        _require(
            isinstance(self.clip_percentile, (int, float)) and 50.0 < self.clip_percentile <= 100.0,
            f"shaping clip_percentile must be in (50, 100] (100 = no clipping), got {self.clip_percentile!r}",
        )
        _require(
            isinstance(self.blend, (int, float)) and 0.0 <= self.blend <= 1.0,
            f"shaping blend must be in [0, 1] (0 = fully shaped, 1 = plain Gaussian), got {self.blend!r}",
        )
        _require(isinstance(self.map_size, int) and self.map_size >= 4, "shaping map_size must be an integer >= 4")
        _positive_int("shaping batch_size", self.batch_size)
        _one_of("shaping energy", self.energy, SHAPING_ENERGIES)
        _require(
            isinstance(self.max_multiplier, (int, float))
            and not isinstance(self.max_multiplier, bool)
            and math.isfinite(self.max_multiplier)
            and self.max_multiplier >= 1.0,
            f"shaping max_multiplier must be a finite number >= 1 (the cap on energy-preserving multipliers, "
            f"whose mean square is 1; 4 by default), got {self.max_multiplier!r}",
        )


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where it lives and how it is split.

    image_size: side in pixels the images are resized to; ``None`` takes the data set's default
    (digits, CIFAR and synthetic 32; image folders their own side if their images are at most 64 px,
    else 224).
    augmentation: the training recipe of images read from disk (:mod:`nsde_ray.augment`):
    ``cifar`` (pad-and-crop, flip; CIFAR normalisation), ``imagenet`` (RandomResizedCrop, flip;
    ImageNet normalisation), ``none`` (train on the evaluation view) or ``auto``: ``cifar`` for
    CIFAR and folders of images of at most 64 px, ``imagenet`` for larger ones.
    val_fraction, test_fraction: held-out fractions for data sets without an official split
    (digits, synthetic); CIFAR takes ``val_fraction`` of its train set for validation.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    augmentation: str = "auto"
    download: bool = False
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    synthetic_samples: int = 600
    synthetic_classes: int = 4
    split_seed: int = 0

    def __post_init__(self) -> None:
        _one_of("dataset", self.dataset, DATASETS)
        if self.dataset in DATASETS_ON_DISK and not self.data_dir:
            raise ConfigError(
                f"dataset {self.dataset!r} is read from disk: pass --data-dir PATH"
                + (" (add --download to fetch CIFAR there)" if "cifar" in self.dataset else "")
            )
        if self.download and self.dataset not in ("cifar10", "cifar100"):
            raise ConfigError("download is only available for cifar10 and cifar100")
        if self.image_size is not None:
            _require(
                isinstance(self.image_size, int) and self.image_size >= 8,
                f"image_size must be an integer >= 8 pixels, got {self.image_size!r}",
            )
        _one_of("augmentation", self.augmentation, AUGMENTATIONS)
        _require(
            self.dataset in DATASETS_ON_DISK or self.augmentation in ("auto", "none"),
            f"augmentation={self.augmentation!r} applies to images read from disk ({', '.join(DATASETS_ON_DISK)}); "
            f"{self.dataset} is in-memory tensors without augmentation: leave augmentation at 'auto'",
        )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _require(0.0 < value < 0.5, f"{name} must be in (0, 0.5), got {value!r}")
        _positive_int("synthetic_samples", self.synthetic_samples)
        _require(self.synthetic_classes >= 2, "synthetic_classes must be >= 2")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and distribution of one trial's training.

    batch_size is per DDP worker. lr is the initial learning rate. ``amp`` (bf16 autocast) and
    ``channels_last`` apply on GPU only. ``max_failures`` is how many worker failures Ray Train
    recovers from, each time from the latest per-epoch checkpoint. ``cpus_per_worker``: CPU cores
    Ray reserves for each DDP worker; data sets decoded from disk (CIFAR, ImageNet folders) use all
    but one of them as DataLoader processes (:func:`nsde_ray.data.loader_processes`).
    ``gpus_per_worker`` (with ``use_gpu``): Ray's GPU resource per worker; a fraction lets several
    one-worker trials share a GPU (small models), whose memory they then share too.
    ``compile``: train through ``torch.compile`` (mode ``compile_mode``: ``default``,
    ``reduce-overhead``, ``max-autotune`` or ``max-autotune-no-cudagraphs``); the first steps of
    each worker then pay the compilation (tens of seconds for a ResNet-50 on a GPU, longer on CPU),
    so it pays off on long runs. Validation and shaping refreshes run eagerly; checkpoints are
    the same as without it. ``init_from``: initial weights (absolute path, visible to every
    worker) of a run that does not resume: a state dict saved with ``torch.save`` (torchvision's
    load unchanged) or a checkpoint of this package, file or directory (:mod:`nsde_ray.weights`).
    ``single_process``: a one-worker run trains in its trial's own process
    (:func:`nsde_ray.train.fit_single_worker`, same loop and checkpoints) instead of under a
    ``TorchTrainer``, which saves Ray Train's start-up; a failed attempt is retried by Tune, up to
    ``max_failures`` times, from the latest checkpoint. Runs with more workers always use a
    ``TorchTrainer``.
    ``resident_data``: ``auto`` decodes the training and validation splits once into the training
    device's memory and batches and augments them there, where the recipe allows it (no
    augmentation, or ``cifar``) and they fit (:mod:`nsde_ray.resident`); ``off`` keeps a
    ``DataLoader`` that decodes and augments every image every epoch.
    """

    epochs: int = 6
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    amp: bool = True
    channels_last: bool = True
    max_failures: int = 2
    seed: int = 0
    compile: bool = False
    compile_mode: str = "default"
    init_from: str | None = None
    single_process: bool = True
    resident_data: str = "auto"

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _one_of("resident_data", self.resident_data, RESIDENT_DATA)
        _require(
            isinstance(self.single_process, bool), f"single_process must be true or false, got {self.single_process!r}"
        )
        _require(isinstance(self.compile, bool), f"compile must be true or false, got {self.compile!r}")
        _one_of("compile_mode", self.compile_mode, COMPILE_MODES)
        _positive_int("batch_size", self.batch_size)
        _positive_int("num_workers (--workers-per-trial)", self.num_workers)
        _positive_int("cpus_per_worker (--cpus-per-worker)", self.cpus_per_worker)
        _require(
            isinstance(self.gpus_per_worker, (int, float))
            and not isinstance(self.gpus_per_worker, bool)
            and 0 < self.gpus_per_worker
            and (self.gpus_per_worker <= 1 or float(self.gpus_per_worker).is_integer()),
            f"gpus_per_worker (--gpus-per-worker) must be a fraction in (0, 1] or a whole number, "
            f"got {self.gpus_per_worker!r}",
        )
        _require(
            not self.use_gpu or self.gpus_per_worker >= 1 or self.num_workers == 1,
            f"gpus_per_worker {self.gpus_per_worker} < 1 needs one worker per trial: NCCL cannot run two "
            f"DDP ranks on one GPU (got {self.num_workers} workers)",
        )
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _require(
            isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
            f"lr must be a finite number > 0, got {self.lr!r}",
        )
        _finite_at_least("momentum", self.momentum, 0.0)
        _finite_at_least("weight_decay", self.weight_decay, 0.0)
        _require(
            isinstance(self.max_failures, int) and self.max_failures >= -1,
            "max_failures must be an integer >= 0, or -1 for unlimited retries",
        )
        _require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        _require(
            self.init_from is None or (isinstance(self.init_from, str) and self.init_from.strip() != ""),
            f"init_from must be the path of initial weights, or None, got {self.init_from!r}",
        )

    @property
    def gpu_request(self) -> float:
        """The GPU resource one worker asks Ray for: ``gpus_per_worker`` with ``use_gpu``, else 0."""
        return self.gpus_per_worker if self.use_gpu else 0

    @property
    def in_trial_process(self) -> bool:
        """Whether a run trains in its trial's process (``single_process`` and one worker) or under a
        ``TorchTrainer``."""
        return self.single_process and self.num_workers == 1


@dataclass(frozen=True)
class EvalConfig:
    """Attribution evaluation of a trained model (the ``evaluate`` step).

    The candidates are the first ``num_images`` test images in the order ``seed`` draws, the same for every
    model; a model is scored on the candidates it classifies correctly.
    n_steps: IG integration points (Gauss-Legendre). nt_samples, nt_stdev: SmoothGrad copies and
    their noise std in pixel units (images in [0, 1]). sensitivity_radius: L-inf radius of the
    max-sensitivity perturbations, pixel units. baseline: ``black`` (all pixels 0) or ``mean``
    (the data set's mean image, 0 in normalised units), for IG and DeepLIFT. deepshap_baselines:
    training images forming DeepSHAP's baseline distribution. batch_size: inputs (or IG path
    points) per model call; 64 suits CPU caches (35 s vs 43 s at 256 for the benchmark), raise it on a GPU.
    """

    methods: tuple[str, ...] = ("ig", "saliency", "deeplift")
    num_images: int = 100
    n_steps: int = 32
    nt_samples: int = 8
    nt_stdev: float = 0.1
    sensitivity_radius: float = 0.02
    n_perturbations: int = 10
    keep_prediction: bool = True
    baseline: str = "black"
    deepshap_baselines: int = 16
    saturation_images: int = 16
    grid_images: int = 6
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        _require(
            len(self.methods) > 0 and len(set(self.methods)) == len(self.methods),
            f"methods must be distinct and not empty, got {self.methods!r}",
        )
        for method in self.methods:
            _one_of("attribution method", method, METHODS)
        _require("ig" in self.methods, "methods must include 'ig': the sweep's sensitivity and sic are those of IG")
        for name in ("num_images", "n_steps", "nt_samples", "n_perturbations", "batch_size", "grid_images"):
            _positive_int(name, getattr(self, name))
        _positive_int("saturation_images", self.saturation_images)
        _require(self.deepshap_baselines >= 2, "deepshap_baselines must be >= 2")
        _finite_at_least("nt_stdev", self.nt_stdev, 0.0)
        _require(
            math.isfinite(self.sensitivity_radius) and self.sensitivity_radius > 0,
            f"sensitivity_radius must be > 0 (pixel units), got {self.sensitivity_radius!r}",
        )
        _one_of("baseline", self.baseline, ("black", "mean"))


# Flat MLflow/Tune param names: section fields are prefixed so that the contract's names
# (noise_mode, noise_sigma, arch, dataset, lr, epochs, seed) come out unchanged.
_PARAM_PREFIX = {"model": "", "noise": "noise_", "shaping": "shaping_", "data": "", "train": "", "eval": "eval_"}


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs: model, noise and its shaping, data, training and attribution evaluation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict, safe to send to Ray workers and to rebuild with :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> TrialConfig:
        """Rebuild (and so re-validate) a config from :meth:`to_dict`'s output; missing sections take defaults."""
        unknown = set(data) - set(_SECTIONS)
        _require(not unknown, f"unknown config sections {sorted(unknown)}; valid: {sorted(_SECTIONS)}")
        return cls(**{name: _build_section(section_cls, data.get(name, {})) for name, section_cls in _SECTIONS.items()})

    def to_params(self) -> dict[str, Any]:
        """Flat ``{name: value}`` of the whole resolved config, for MLflow params."""
        params: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                params[_PARAM_PREFIX[section] + key] = value
        return params

    def with_params(self, params: dict[str, Any]) -> TrialConfig:
        """A copy with flat params (the names of :meth:`to_params`, e.g. ``noise_sigma``) replaced; validated."""
        sections = self.to_dict()
        names = {_PARAM_PREFIX[section] + key: (section, key) for section, values in sections.items() for key in values}
        unknown = set(params) - set(names)
        _require(not unknown, f"unknown params {sorted(unknown)}; valid: {sorted(names)}")
        for name, value in params.items():
            section, key = names[name]
            sections[section][key] = value
        return TrialConfig.from_dict(sections)


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "noise": NoiseConfig,
    "shaping": ShapingConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def _build_section(section_cls: type, values: dict[str, Any]):
    valid = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - valid
    _require(not unknown, f"unknown {section_cls.__name__} fields {sorted(unknown)}; valid: {sorted(valid)}")
    return section_cls(**values)


@dataclass(frozen=True)
class SearchSpace:
    """What the sweep searches (each range is ``(low, high)``, inclusive).

    noise_modes: the modes searched (``None``: every registered one, :data:`nsde_ray.registry.NOISE_MODES`);
    each mode's record says which params are searched for it (:attr:`NoiseMode.params`), with their
    ranges here: noise_sigma (unitless, see :class:`NoiseConfig`) for the noisy modes, the shaping
    schedule (warm-up epochs, refresh interval in epochs, outlier-clipping percentile, shaping method,
    energy: ``raw`` or ``preserve``, see :class:`ShapingConfig`) for ``attribution`` only. The learning
    rate (log scale) is searched for every trial. ``warmup_epochs_max`` and ``refresh_every_max``
    of ``None`` mean "up to the trial's epochs". The papers' setting (gaussian, sigma 0.5) and
    the plain ResNet are always evaluated first, at the base learning rate.
    """

    sigma_range: tuple[float, float] = (0.0, 1.0)
    lr_range: tuple[float, float] = (0.02, 0.3)
    warmup_epochs_max: int | None = None
    refresh_every_max: int | None = None
    clip_range: tuple[float, float] = (90.0, 100.0)
    shaping_methods: tuple[str, ...] = ("ig", "saliency")
    shaping_energies: tuple[str, ...] = SHAPING_ENERGIES
    noise_modes: tuple[str, ...] | None = None
    fgsm_epsilon_range: tuple[float, float] = (0.005, 0.05)
    fgsm_step_range: tuple[float, float] = (0.005, 0.0625)
    gradreg_weight_range: tuple[float, float] = (0.001, 10.0)

    def modes(self) -> tuple[str, ...]:
        """The noise modes searched."""
        return noise_mode_names() if self.noise_modes is None else self.noise_modes

    def bounds(self, name: str, epochs: int):
        """The ``(low, high)`` range or the choices of a :class:`nsde_ray.registry.SearchParam`'s ``bounds``:
        a field of this space, or ``warmup_epochs`` / ``refresh_every`` (integer ranges up to ``epochs``)."""
        if name == "warmup_epochs":
            most = epochs - 1 if self.warmup_epochs_max is None else self.warmup_epochs_max
            return 0, max(0, min(most, epochs - 1))
        if name == "refresh_every":
            return 1, max(1, epochs if self.refresh_every_max is None else self.refresh_every_max)
        return getattr(self, name)

    def __post_init__(self) -> None:
        if self.noise_modes is not None:
            object.__setattr__(self, "noise_modes", tuple(self.noise_modes))
            _require(
                len(self.noise_modes) > 0 and len(set(self.noise_modes)) == len(self.noise_modes),
                f"noise_modes must be distinct and not empty, got {list(self.noise_modes)}",
            )
            for mode in self.noise_modes:
                _one_of("noise mode", mode, noise_mode_names())
        for name in (
            "sigma_range",
            "lr_range",
            "clip_range",
            "fgsm_epsilon_range",
            "fgsm_step_range",
            "gradreg_weight_range",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            value = getattr(self, name)
            _require(
                len(value) == 2
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
                and value[0] <= value[1],
                f"{name} must be two finite numbers LOW <= HIGH, got {value!r}",
            )
        object.__setattr__(self, "shaping_methods", tuple(self.shaping_methods))
        object.__setattr__(self, "shaping_energies", tuple(self.shaping_energies))
        _require(
            self.sigma_range[0] >= 0.0,
            f"sigma range {self.sigma_range} goes below 0: the noise magnitude sigma is >= 0 (try 0 1)",
        )
        _require(
            self.sigma_range[1] <= MAX_SIGMA,
            f"sigma range {self.sigma_range} goes above {MAX_SIGMA:g}, the most a noise sigma may be: {SIGMA_REASON}",
        )
        _require(
            self.sigma_range[0] <= REFERENCE_SIGMA <= self.sigma_range[1],
            f"sigma range {self.sigma_range} must contain {REFERENCE_SIGMA}, the papers' setting, "
            "which every sweep evaluates as a reference point",
        )
        _require(self.lr_range[0] > 0.0, f"lr range {self.lr_range} must be > 0")
        _require(
            self.fgsm_epsilon_range[0] >= 0.0 and self.fgsm_epsilon_range[1] <= 1.0,
            f"fgsm_epsilon_range {self.fgsm_epsilon_range} must lie in [0, 1] (pixel units)",
        )
        _require(self.fgsm_step_range[0] >= 0.0, f"fgsm_step_range {self.fgsm_step_range} must be >= 0 (pixel units)")
        _require(
            self.gradreg_weight_range[0] > 0.0,
            f"gradreg_weight_range {self.gradreg_weight_range} must be > 0 (it is searched on a log scale)",
        )
        _require(
            50.0 < self.clip_range[0] and self.clip_range[1] <= 100.0,
            f"clip range {self.clip_range} must lie in (50, 100] (percentiles; 100 = no clipping)",
        )
        _require(len(self.shaping_methods) > 0, "shaping_methods must not be empty")
        for method in self.shaping_methods:
            _one_of("shaping method", method, SHAPING_METHODS)
        _require(len(self.shaping_energies) > 0, f"shaping_energies must not be empty; choose from {SHAPING_ENERGIES}")
        for energy in self.shaping_energies:
            _one_of("shaping energy", energy, SHAPING_ENERGIES)
        for name in ("warmup_epochs_max", "refresh_every_max"):
            value = getattr(self, name)
            _require(
                value is None or (isinstance(value, int) and value >= (0 if name.startswith("warmup") else 1)),
                f"{name} must be None or an integer >= {0 if name.startswith('warmup') else 1}, got {value!r}",
            )


REFERENCE_SIGMA = 0.5
SPACE = "space"  # SweepConfig's search-space section, which --set may name beside the trial's


@dataclass(frozen=True)
class RunConfig:
    """What every run of either command has: a name, where it lives, its base trial and its MLflow store.

    name: the run's directory in ``storage`` (Ray Tune state and every trial's checkpoints) and the
    default MLflow experiment (``experiment`` overrides it). max_concurrent: trials at once
    (``None``: as many as the cluster's CPUs/GPUs allow). tracking_uri: MLflow tracking URI
    (``None``: MLflow's default, ``sqlite:///mlflow.db`` in the working directory, made absolute so
    every Ray process writes to the same store).
    """

    name: str
    storage: str
    base: TrialConfig = field(default_factory=TrialConfig)
    max_concurrent: int | None = None
    tracking_uri: str | None = None
    experiment: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        _require(
            self.max_concurrent is None
            or (
                isinstance(self.max_concurrent, int)
                and not isinstance(self.max_concurrent, bool)
                and self.max_concurrent >= 1
            ),
            f"max_concurrent (--max-concurrent) must be an integer >= 1, got {self.max_concurrent!r}",
        )

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


AUTO, AUTO_START_SEEDS = "auto", 2


@dataclass(frozen=True)
class SweepConfig(RunConfig):
    """One accuracy-vs-robustness sweep: the base trial, the search space and where things go.

    num_samples: trials in all, the reference points included. seed: the searcher's.
    seeds_per_config: training seeds each configuration is trained with (seeds ``base.train.seed``
    onwards, one full run each); the searcher and the front see the means over them. ``"auto"``:
    adaptive replication (:mod:`nsde_ray.replication`): every configuration starts with
    :data:`AUTO_START_SEEDS`, and after the search, configurations whose membership of the front is
    undecided (membership probability in ``undecided_band``, bounds included) get one more seed at a
    time, up to ``max_seeds`` each and ``seed_budget`` seed runs in all (``None``: 2.5 seed runs per
    configuration), the first seeds included.
    """

    space: SearchSpace = field(default_factory=SearchSpace)
    num_samples: int = 8
    seed: int = 0
    seeds_per_config: int | str = AUTO
    max_seeds: int = 4
    seed_budget: int | None = None
    undecided_band: tuple[float, float] = BAND

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive_int("num_samples (--num-samples)", self.num_samples)
        if self.seeds_per_config != AUTO:
            _positive_int("seeds_per_config (--seeds-per-config, or 'auto')", self.seeds_per_config)
        _positive_int("max_seeds (--max-seeds)", self.max_seeds)
        _require(
            not self.adaptive or self.max_seeds >= AUTO_START_SEEDS,
            f"max_seeds (--max-seeds) {self.max_seeds} is below the {AUTO_START_SEEDS} seeds every configuration "
            "starts with under --seeds-per-config auto",
        )
        if self.seed_budget is not None:
            _positive_int("seed_budget (--seed-budget)", self.seed_budget)
        object.__setattr__(self, "undecided_band", tuple(self.undecided_band))  # JSON gives a list
        low, high = self.undecided_band
        _require(
            0.0 <= low < high <= 1.0,
            f"undecided_band (--undecided-band) must satisfy 0 <= LOW < HIGH <= 1, got {self.undecided_band}",
        )
        _require(
            self.space.lr_range[0] <= self.base.train.lr <= self.space.lr_range[1],
            f"the base learning rate {self.base.train.lr} (the reference points') must lie in the lr range "
            f"{self.space.lr_range}",
        )
        _require(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")

    @property
    def adaptive(self) -> bool:
        """Whether seeds are added where the front is undecided (``seeds_per_config = "auto"``)."""
        return self.seeds_per_config == AUTO

    @property
    def initial_seeds(self) -> int:
        """The seeds every configuration is trained with during the search."""
        return AUTO_START_SEEDS if self.adaptive else int(self.seeds_per_config)

    @property
    def total_seed_budget(self) -> int:
        """Seed runs the sweep may spend in all under ``auto``: ``seed_budget``, or 2.5 per configuration."""
        return self.seed_budget if self.seed_budget is not None else (5 * self.num_samples) // 2

    def parent_params(self) -> dict[str, Any]:
        """The sweep run's params: the base trial's, and the noise modes searched (comma-separated)."""
        return dict(self.base.to_params(), noise_modes=",".join(self.space.modes()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        values = dict(data)
        values.setdefault("seeds_per_config", 1)  # sweeps saved before replicates trained one seed
        values["base"] = TrialConfig.from_dict(values.get("base", {}))
        values["space"] = _build_section(SearchSpace, values.get("space", {}))
        return _build_section(cls, values)


DEFAULT_SEEDS, PAPER_REPEATS = (0, 1, 2), 5


@dataclass(frozen=True)
class PaperTablesConfig(RunConfig):
    """The grid: every (arch, noise mode, seed), trained once from ``base`` and evaluated ``repeats`` times.

    base: every trial's config before the grid's params; its noise sigma (normalised, unitless;
    the papers' 0.5) is that of the noisy modes, its ``eval`` the evaluation of one repeat.
    seeds: training seeds (initial weights, shards, noise draws); the evaluation seeds are the
    same for every model. name, storage, max_concurrent, tracking_uri, experiment: as in
    :class:`RunConfig`. paired: train the plain models (``none``) for
    ``base.train.epochs``, then fine-tune every other mode from the plain model of its (arch, seed)
    for ``finetune_epochs`` (:mod:`nsde_ray.paired`); ``storage`` must then be a file system path.
    """

    archs: tuple[str, ...] = (ModelConfig.arch,)
    noise_modes: tuple[str, ...] = field(default_factory=noise_mode_names)
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    repeats: int = PAPER_REPEATS
    paired: bool = False
    finetune_epochs: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("archs", "noise_modes", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"{name} must be distinct and not empty, got {list(values)}")
        for arch in self.archs:
            ModelConfig(arch=arch)
        for mode in self.noise_modes:
            NoiseConfig(mode=mode)
        if any(not isinstance(seed, int) or isinstance(seed, bool) or seed < 0 for seed in self.seeds):
            raise ConfigError(f"seeds must be integers >= 0, got {list(self.seeds)}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"repeats (--repeats) must be an integer >= 1, got {self.repeats!r}")
        noisy = sorted(mode for mode in self.noise_modes if injects_noise(mode))
        if noisy and self.base.noise.sigma <= 0:
            raise ConfigError(
                f"sigma (--sigma) must be > 0 for the noisy modes {noisy}: "
                "with sigma 0 they are the plain ResNet (the papers use 0.5)"
            )
        if self.paired:
            if "none" not in self.noise_modes or len(self.noise_modes) < 2:
                raise ConfigError(
                    "--paired fine-tunes the noisy models from the plain one: --noise-modes must include "
                    f"none and another mode, got {list(self.noise_modes)}"
                )
            if (
                not isinstance(self.finetune_epochs, int)
                or isinstance(self.finetune_epochs, bool)
                or self.finetune_epochs < 1
            ):
                raise ConfigError(
                    "--paired needs --finetune-epochs N (an integer >= 1): the epochs of each noisy "
                    f"model's fine-tune from the plain model, got {self.finetune_epochs!r}"
                )
            if "://" in self.storage:
                raise ConfigError(
                    f"--paired reads the plain models' checkpoints as files: --storage must be a local "
                    f"or NFS path that every node sees, not {self.storage!r}"
                )
        elif self.finetune_epochs is not None:
            raise ConfigError("--finetune-epochs applies to --paired grids only: add --paired or drop it")

    @property
    def grid_size(self) -> int:
        return len(self.archs) * len(self.noise_modes) * len(self.seeds)

    def parent_params(self) -> dict[str, Any]:
        """The parent run's params: the base trial's, with the grid's axes (comma-separated) and repeats."""
        paired = {"paired": "true", "finetune_epochs": self.finetune_epochs} if self.paired else {"paired": "false"}
        return dict(
            self.base.to_params(),
            arch=",".join(self.archs),
            noise_mode=",".join(self.noise_modes),
            seed=",".join(map(str, self.seeds)),
            repeats=self.repeats,
            **paired,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PaperTablesConfig:
        return cls(**dict(data, base=TrialConfig.from_dict(data["base"])))
