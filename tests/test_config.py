"""Typed config: validation messages, dict round trip, the MLflow param names of the contract."""

import pytest

from nsde_ray.config import (
    MAX_SIGMA,
    ConfigError,
    DataConfig,
    ModelConfig,
    NoiseConfig,
    PaperTablesConfig,
    SearchSpace,
    ShapingConfig,
    SweepConfig,
    TrainConfig,
    TrialConfig,
    check_name,
)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModelConfig(arch="resnet9000"), "arch='resnet9000' is not valid; choose one of: cifar_resnet8"),
        (lambda: NoiseConfig(sigma=-0.1), "noise sigma must be a finite number >= 0"),
        (lambda: NoiseConfig(sigma=float("nan")), "noise sigma must be a finite number"),
        (lambda: NoiseConfig(mode="brownian"), "choose one of: none, gaussian, attribution"),
        (lambda: DataConfig(dataset="mnist"), "dataset='mnist' is not valid"),
        (lambda: DataConfig(dataset="cifar10"), "pass --data-dir PATH .*--download"),
        (lambda: DataConfig(dataset="digits", download=True), "only available for cifar10 and cifar100"),
        (lambda: DataConfig(image_size=4), "image_size must be an integer >= 8"),
        (lambda: TrainConfig(epochs=0), "epochs must be an integer >= 1"),
        (lambda: TrainConfig(lr=0.0), "lr must be a finite number > 0"),
        (lambda: TrainConfig(num_workers=0), "--workers-per-trial"),
        (lambda: TrainConfig(optimizer="lbfgs"), "choose one of: sgd, adam, adamw"),
        (lambda: ShapingConfig(energy="keep"), "shaping energy='keep' is not valid; choose one of: raw, preserve"),
        (lambda: ShapingConfig(max_multiplier=0.5), "shaping max_multiplier must be a finite number >= 1"),
        (lambda: SearchSpace(shaping_energies=()), "shaping_energies must not be empty"),
        (
            lambda: NoiseConfig(sigma=50.0),
            "noise sigma 50.0 is above 10, the most it may be: sigma is the noise std "
            "relative to each block output's own std",
        ),
        (lambda: SearchSpace(sigma_range=(0.0, 20.0)), r"sigma range \(0.0, 20.0\) goes above 10"),
    ],
)
def test_bad_values_fail_with_a_message_that_says_what_to_do(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_the_largest_noise_sigma_is_accepted():
    assert NoiseConfig(sigma=MAX_SIGMA).sigma == 10.0 and SearchSpace(sigma_range=(0.0, MAX_SIGMA)).sigma_range[1] == 10


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "../up", "a\\b", "tab\there", "new\nline", "bell\x07", " lead", "trail ", "   "]
)
def test_sweep_names_that_could_leave_the_storage_or_hide_are_refused(name):
    with pytest.raises(ConfigError, match="sweep name"):
        check_name(name)
    with pytest.raises(ConfigError, match="sweep name"):
        SweepConfig(name=name, storage="/tmp")
    with pytest.raises(ConfigError, match="sweep name"):
        PaperTablesConfig(name=name, storage="/tmp")


def test_ordinary_sweep_names_are_kept():
    for name in ("accuracy_vs_robustness_20260101_120000", "my sweep", "cifar-10.v2", "ÿ-unicode"):
        check_name(name)
        assert SweepConfig(name=name, storage="/tmp").name == name


def test_round_trip_through_dict_revalidates():
    cfg = TrialConfig(noise=NoiseConfig("attribution", 0.25), train=TrainConfig(epochs=3, seed=7))
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    data = cfg.to_dict()
    data["noise"]["sigma"] = -1.0
    with pytest.raises(ConfigError, match="noise sigma"):
        TrialConfig.from_dict(data)
    with pytest.raises(ConfigError, match="unknown NoiseConfig fields \\['sigmaa'\\]"):
        TrialConfig.from_dict({"noise": {"sigmaa": 1.0}})


def test_params_carry_the_contract_names_and_the_whole_config():
    cfg = TrialConfig()
    params = cfg.to_params()
    for name in ("noise_mode", "noise_sigma", "arch", "dataset", "lr", "epochs", "seed"):
        assert name in params
    n_fields = sum(len(section) for section in cfg.to_dict().values())
    assert len(params) == n_fields  # no two fields flatten to the same name


def test_compile_flag_is_validated_and_round_trips():
    from nsde_ray.config import TrainConfig, TrialConfig

    cfg = TrialConfig(train=TrainConfig(compile=True, compile_mode="max-autotune-no-cudagraphs"))
    assert TrialConfig.from_dict(cfg.to_dict()).train.compile is True
    assert cfg.to_params()["compile"] is True and TrialConfig().train.compile is False
    with pytest.raises(ConfigError, match="compile must be true or false"):
        TrainConfig(compile="yes")
    with pytest.raises(ConfigError, match="compile_mode='fastest' is not valid; choose one of: default"):
        TrainConfig(compile_mode="fastest")


def test_resident_data_is_auto_or_off_and_round_trips():
    from nsde_ray.config import TrainConfig, TrialConfig

    cfg = TrialConfig(train=TrainConfig(resident_data="off"))
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_params()["resident_data"] == "off"
    assert TrainConfig().resident_data == "auto"
    with pytest.raises(ConfigError, match="resident_data='gpu' is not valid; choose one of: auto, off"):
        TrainConfig(resident_data="gpu")


def test_init_from_is_a_path_or_none_and_round_trips():
    cfg = TrialConfig(train=TrainConfig(init_from="/weights/resnet18.pt"))
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_params()["init_from"] == "/weights/resnet18.pt"
    assert TrialConfig().train.init_from is None
    for bad in ("", "  ", 3):
        with pytest.raises(ConfigError, match="init_from must be the path of initial weights, or None"):
            TrainConfig(init_from=bad)


def test_gpu_fractions_are_validated_and_requested_on_both_training_paths(tmp_path):
    """A fraction of a GPU per one-worker trial (several small-model trials share a GPU); Ray's resource request
    follows on both paths: the trial itself (in its own process) or the TorchTrainer's workers."""
    from nsde_ray.train import build_trainer
    from nsde_ray.trial import trial_trainable

    assert TrainConfig(use_gpu=True, gpus_per_worker=0.25).gpu_request == 0.25
    assert TrainConfig(gpus_per_worker=0.25).gpu_request == 0  # no GPU asked for without use_gpu
    for bad in (0, -1, 1.5, True, "half"):
        with pytest.raises(ConfigError, match="must be a fraction in \\(0, 1\\] or a whole number"):
            TrainConfig(gpus_per_worker=bad)
    with pytest.raises(ConfigError, match="NCCL cannot run two DDP ranks on one GPU"):
        TrainConfig(use_gpu=True, gpus_per_worker=0.5, num_workers=2)

    quarter = TrialConfig(train=TrainConfig(use_gpu=True, gpus_per_worker=0.25))
    sweep = SweepConfig(name="gpus", storage=str(tmp_path), base=quarter)
    assert trial_trainable(sweep, {})._resources.bundles == [{"CPU": 1, "GPU": 0.25, "memory": 256 * 1024**2}]
    trainer_path = TrialConfig(train=TrainConfig(use_gpu=True, gpus_per_worker=0.25, single_process=False))
    assert trial_trainable(SweepConfig(name="t", storage=str(tmp_path), base=trainer_path), {})._resources.bundles == [
        {"memory": 256 * 1024**2}
    ]  # the TorchTrainer's workers hold the resources
    scaling = build_trainer(trainer_path, name="t", storage_path=str(tmp_path)).scaling_config
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1, "GPU": 0.25}
