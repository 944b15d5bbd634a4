"""--set, --config, --recipe and --image-size: parsing by declared type, layering, and bad values failing before Ray."""

import dataclasses
import json
import sys

import pytest
from helpers import assert_usage_error

from nsde_ray import cli, overrides, paper_tables
from nsde_ray.config import ConfigError, TrainConfig, TrialConfig
from nsde_ray.names import METHODS
from nsde_ray.overrides import OverrideError, build_trial, load_config_file, parse_set, parse_value


@pytest.mark.parametrize(
    "assignment, section, field, value",
    [
        ("train.epochs=3", "train", "epochs", 3),  # int
        ("train.lr=1e-4", "train", "lr", 1e-4),  # float
        ("noise.sigma=1", "noise", "sigma", 1.0),
        ("train.use_gpu=true", "train", "use_gpu", True),  # bool, every spelling
        ("train.use_gpu=Yes", "train", "use_gpu", True),
        ("train.use_gpu=1", "train", "use_gpu", True),
        ("train.amp=false", "train", "amp", False),
        ("train.amp=no", "train", "amp", False),
        ("train.amp=0", "train", "amp", False),
        ("train.optimizer=adam", "train", "optimizer", "adam"),  # str
        ("data.image_size=64", "data", "image_size", 64),  # int | None
        ("data.image_size=none", "data", "image_size", None),
        ("data.data_dir=null", "data", "data_dir", None),  # str | None
        ("data.data_dir=/data/cifar", "data", "data_dir", "/data/cifar"),
        ("eval.methods=ig, saliency,deeplift", "eval", "methods", ("ig", "saliency", "deeplift")),  # tuple[str, ...]
        ("eval.methods=ig", "eval", "methods", ("ig",)),
    ],
)
def test_set_parses_each_declared_type(assignment, section, field, value):
    parsed = parse_set(assignment)
    assert parsed == (section, field, value) and type(parsed.value) is type(value)
    assert getattr(getattr(build_trial([parsed]), section), field) == value


def test_fixed_length_tuples_parse_item_by_item():
    assert parse_value("0.1, 0.3", tuple[float, float], "space.lr_range") == (0.1, 0.3)
    with pytest.raises(OverrideError, match=r"takes 2 comma-separated values \(a number, a number\), got '0.1'"):
        parse_value("0.1", tuple[float, float], "space.lr_range")


def test_every_field_of_every_section_is_settable_from_text():
    """Fields are read from the dataclasses: each default, written as text, parses back to itself."""

    def text(value):
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    defaults = TrialConfig().to_dict()
    sets = [
        parse_set(f"{section}.{field}={text(value)}")
        for section, values in defaults.items()
        for field, value in values.items()
    ]
    assert len(sets) == sum(len(fields) for fields in overrides.field_types().values())
    assert build_trial(sets) == TrialConfig()


@pytest.mark.parametrize(
    "assignment, message",
    [
        (
            "train.lrr=0.1",
            "unknown field 'lrr' of config section 'train' (did you mean train.lr?); valid train fields: "
            "epochs, batch_size, optimizer, lr,",
        ),
        (
            "trian.lr=0.1",
            "unknown config section 'trian' in 'trian.lr' (did you mean train.lr?); valid sections: model, "
            "noise, shaping, data, train, eval",
        ),
        ("lr=0.1", "'lr' names no config field (did you mean train.lr?): write SECTION.FIELD"),
        ("train.lr", "expected SECTION.FIELD=VALUE"),
        ("train.epochs=1.5", "train.epochs takes an integer, got '1.5'"),
        ("train.lr=fast", "train.lr takes a number, got 'fast'"),
        ("train.use_gpu=maybe", "train.use_gpu takes true or false, got 'maybe'"),
        ("data.image_size=big", "data.image_size takes an integer or none, got 'big'"),
    ],
)
def test_bad_names_and_types_say_what_is_valid(assignment, message):
    with pytest.raises(OverrideError) as error:
        parse_set(assignment)
    assert message in str(error.value)


def test_values_are_validated_by_building_the_config():
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got -1.0"):
        build_trial([parse_set("train.lr=-1")])


def _write(path, data, as_yaml=False):
    import yaml

    path.write_text(yaml.safe_dump(json.loads(json.dumps(data))) if as_yaml else json.dumps(data))
    return str(path)


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_config_files_round_trip_a_whole_config(tmp_path, suffix):
    cfg = TrialConfig(train=TrainConfig(optimizer="adamw", lr=3e-4, use_gpu=True, init_from="/w.pt"))
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, methods=("ig", "deepshap"), num_images=7))
    path = _write(tmp_path / f"cfg{suffix}", cfg.to_dict(), as_yaml=suffix != ".json")
    assert build_trial(load_config_file(path)) == cfg


def test_partial_yaml_reads_numbers_yaml_leaves_as_text(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train:\n  lr: 1e-4\n  epochs: 2\ndata:\n  image_size: null\n")
    cfg = build_trial(load_config_file(str(path)))
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.image_size, cfg.train.optimizer) == (1e-4, 2, None, "sgd")


@pytest.mark.parametrize(
    "content, message",
    [
        ({"train": {"lrr": 0.1}}, "cfg.json': unknown field 'lrr' of config section 'train' (did you mean train.lr?)"),
        ({"trian": {"lr": 0.1}}, "unknown config section 'trian' (did you mean train?); valid sections: model,"),
        ({"train": 0.1}, "section 'train' must be a mapping of fields"),
        ({"train": {"epochs": [1, 2]}}, "train.epochs takes an integer, got [1, 2]"),
        ([1, 2], "must hold a mapping of config sections, got list"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path, content, message):
    with pytest.raises(OverrideError) as error:
        load_config_file(_write(tmp_path / "cfg.json", content))
    assert message in str(error.value)


def test_config_file_errors_for_missing_files_and_formats(tmp_path, monkeypatch):
    with pytest.raises(OverrideError, match="cannot be read"):
        load_config_file(str(tmp_path / "missing.json"))
    with pytest.raises(OverrideError, match="expected a .json, .yaml or .yml file"):
        load_config_file(_write(tmp_path / "cfg.toml", {}))
    (tmp_path / "bad.json").write_text("{train: ")
    with pytest.raises(OverrideError, match="is not valid JSON"):
        load_config_file(str(tmp_path / "bad.json"))
    (tmp_path / "cfg.yaml").write_text("train: {lr: 0.05}\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    with pytest.raises(OverrideError, match=r"reading YAML needs PyYAML \(pip install pyyaml"):
        load_config_file(str(tmp_path / "cfg.yaml"))


def _sweep(argv, tmp_path):
    args = cli.parse_args(cli.build_parser(), argv)
    return cli.sweep_config_from_args(args, "s", str(tmp_path))


def test_precedence_defaults_config_flags_recipe_set(tmp_path):
    config = _write(
        tmp_path / "cfg.json",
        {"train": {"batch_size": 8, "epochs": 2, "lr": 0.01, "seed": 3}, "eval": {"num_images": 10}},
    )
    cfg = _sweep(
        ["--config", config, "--epochs", "6", "--lr", "0.05", "--recipe", "paper", "--set", "train.optimizer=adamw"],
        tmp_path,
    ).base
    assert cfg.eval.num_images == 10  # --config over the command's default (64), over EvalConfig's (100)
    assert cfg.train.batch_size == 8 and cfg.train.seed == 3  # --config over flags left at their defaults
    assert cfg.train.epochs == 6  # a flag given, even at its default value, over --config
    assert cfg.train.lr == 1e-4 and cfg.train.lr_schedule == "plateau"  # --recipe over flags
    assert cfg.train.optimizer == "adamw"  # --set over --recipe
    assert cfg.eval.methods == cli.SWEEP_EVAL_METHODS  # the command's default, over EvalConfig's


def test_later_sets_win_and_flags_keep_their_behaviour(tmp_path):
    cfg = _sweep(
        [
            "--set",
            "train.epochs=3",
            "--set",
            "train.epochs=4",
            "--image-size",
            "16",
            "--arch",
            "cifar_resnet14",
            "--workers-per-trial",
            "2",
            "--eval-methods",
            "ig",
            "deeplift",
        ],
        tmp_path,
    )
    base = cfg.base
    assert base.train.epochs == 4 and base.data.image_size == 16 and base.model.arch == "cifar_resnet14"
    assert base.train.num_workers == 2 and base.eval.methods == ("ig", "deeplift")
    assert base.eval.num_images == cli.SWEEP_EVAL_IMAGES and base.train.optimizer == "sgd"


def test_paper_recipe_centres_the_swept_lr_range_unless_given(tmp_path):
    assert _sweep([], tmp_path).space.lr_range == (0.02, 0.3)
    assert _sweep(["--recipe", "paper"], tmp_path).space.lr_range == pytest.approx((1e-5, 1e-3))
    assert _sweep(["--recipe", "paper", "--lr-range", "1e-5", "1e-2"], tmp_path).space.lr_range == (1e-5, 1e-2)


def test_the_sweep_sets_its_search_space_the_same_way(tmp_path, capsys, monkeypatch):
    space = _sweep(
        [
            "--set",
            "space.lr_range=0.01, 0.2",
            "--set",
            "space.shaping_methods=saliency",
            "--sigma-range",
            "0.2",
            "0.8",
            "--lr",
            "0.05",
        ],
        tmp_path,
    ).space
    assert (space.lr_range, space.shaping_methods, space.sigma_range) == ((0.01, 0.2), ("saliency",), (0.2, 0.8))
    assert _sweep(["--recipe", "paper", "--set", "space.lr_range=1e-5,1e-2"], tmp_path).space.lr_range == (1e-5, 1e-2)
    monkeypatch.chdir(tmp_path)
    storage = ["--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert_usage_error(
        cli.main,
        ["--set", "space.lr_range=0.01"] + storage,
        "space.lr_range takes 2 comma-separated values (a number, a number), got '0.01'",
        capsys,
    )
    assert_usage_error(
        paper_tables.main,
        ["--set", "space.lr_range=0.01,0.2"] + storage,
        "unknown config section 'space' in 'space.lr_range'; valid sections: model,",
        capsys,
    )


def test_paper_tables_take_the_same_overrides(tmp_path):
    parser = paper_tables.build_parser()
    args = cli.parse_args(
        parser,
        [
            "--image-size",
            "16",
            "--recipe",
            "paper",
            "--set",
            "model.arch=cifar_resnet14",
            "--sigma",
            "0.25",
            "--set",
            "eval.n_steps=8",
        ],
    )
    cfg = paper_tables.config_from_args(args, "t", str(tmp_path))
    assert cfg.archs == ("cifar_resnet14",)  # without --arch the grid is the base config's model.arch
    assert (cfg.base.data.image_size, cfg.base.train.optimizer, cfg.base.noise.sigma, cfg.base.eval.n_steps) == (
        16,
        "adam",
        0.25,
        8,
    )
    assert cfg.base.eval.methods == METHODS


@pytest.mark.parametrize("main", [cli.main, paper_tables.main], ids=["sweep", "paper_tables"])
@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--set", "train.lrr=0.1"],
            "unknown field 'lrr' of config section 'train' (did you mean train.lr?); "
            "valid train fields: epochs, batch_size, optimizer, lr,",
        ),
        (["--set", "shapin.blend=0.5"], "(did you mean shaping.blend?); valid sections: model, noise, shaping,"),
        (["--set", "train.lr=-1"], "lr must be a finite number > 0, got -1.0"),
        (["--set", "shaping.blend=2"], "shaping blend must be in [0, 1]"),
        (["--set", "train.epochs=two"], "train.epochs takes an integer, got 'two'"),
        (["--image-size", "4"], "image_size must be an integer >= 8 pixels, got 4"),
    ],
)
def test_bad_overrides_exit_2_before_ray_starts(main, flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(
        main,
        flags + ["--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        message,
        capsys,
    )


@pytest.mark.parametrize("parser", [cli.build_parser, paper_tables.build_parser], ids=["sweep", "paper_tables"])
def test_help_lists_the_new_flags(parser, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--image-size", "--set", "--config", "--recipe", "--init-from"):
        assert flag in out


def test_readme_configuration_commands_parse():
    from helpers import readme_commands

    parsers = {"sweeps.accuracy_vs_robustness": cli.build_parser, "sweeps.paper_tables": paper_tables.build_parser}
    commands = readme_commands("## Configuration")
    assert {argv[2] for argv in commands} == set(parsers)
    for argv in commands:
        parsers[argv[2]]().parse_args(argv[3:])  # exits (fails the test) on a flag the command does not have
