"""python -m sweeps.paper_tables: the tables and their verdicts, repeated evaluation, bad flags, a tiny grid end to
end."""

import csv
import io
import math
import os
from dataclasses import replace
from types import SimpleNamespace

import mlflow
import pytest
from helpers import assert_usage_error

from nsde_ray import tables
from nsde_ray.config import EvalConfig, PaperTablesConfig, SweepConfig
from nsde_ray.evaluate import ARTIFACT_PER_IMAGE, REPEATS_FILE, evaluate, evaluate_repeated
from nsde_ray.lifecycle import save_state
from nsde_ray.paper_tables import SMOKE_EVAL, main
from nsde_ray.registry import noise_mode_names
from nsde_ray.report import model_results, run_metrics
from nsde_ray.uncertainty import holm

MODES = ("none", "gaussian", "attribution")


def _results() -> list[tables.ModelResult]:
    """Three seeds of one architecture: IG's sensitivity ordered as the papers say in seeds 0 and 1, not in 2."""
    sensitivity_ig = {0: (0.5, 0.4, 0.3), 1: (0.6, 0.5, 0.4), 2: (0.5, 0.3, 0.35)}
    results = []
    for seed, values in sensitivity_ig.items():
        for mode, value in zip(MODES, values):
            metrics = {
                "val_accuracy": 0.9,
                "sensitivity_ig": value,
                "sensitivity_ig_std": 0.01,
                "sensitivity_saliency": 0.2 if mode == "none" else 0.3,  # the opposite of the claim
                "sic_ig": {"none": 0.1, "gaussian": 0.2, "attribution": 0.3}[mode] + seed / 100,
                "sic_saliency": 0.05,
                "localisation_auc_ig": 0.7,
            }
            results.append(tables.ModelResult("cifar_resnet8", mode, seed, metrics))
    return results


def test_tables_have_the_papers_shape_and_state_whether_the_orderings_held():
    report = {t.name: t for t in tables.paper_tables(_results(), ["cifar_resnet8"], ["ig", "saliency"])}
    assert list(report) == ["accuracy", "sensitivity_cifar_resnet8", "sic", "localisation_cifar_resnet8"]

    sensitivity = report["sensitivity_cifar_resnet8"]
    assert sensitivity.header[:5] == [
        "Attribution",
        "Standard (ResNet)",
        "Noise (Gaussian SDE)",
        "Attribution-driven noise",
        "Input noise (baseline)",
    ]
    ig, saliency = sensitivity.rows
    assert ig[:5] == ["IG", "0.5333 ± 0.058", "0.4 ± 0.1", "0.35 ± 0.05", tables.MISSING]  # no input-noise models
    modes = len(noise_mode_names())
    assert ig[5 : 1 + modes] == [tables.MISSING] * (modes - 4)  # no models of the robust-training baselines either
    assert ig[1 + modes :] == ["yes (3/3 seeds)", "yes (2/3 seeds)", "yes (2/3 seeds)", "n/a"]
    assert saliency[0] == "Saliency"
    assert saliency[1 + modes :] == ["no (0/3 seeds)", "no (0/3 seeds)", "no (0/3 seeds)", "n/a"]
    assert sensitivity.notes[0].endswith("held on the means for 1 of 2 methods, in every seed for 1")
    assert sensitivity.notes[2].endswith("held on the means for 1 of 2 methods, in every seed for 0")
    assert sensitivity.notes[4] == (
        "spread: the std across training seeds (median over cells 0.058) is 5.8x the std "
        "across evaluation repeats of one model (0.01); training seeds, not evaluation "
        "repeats, decide how sure an ordering is"
    )
    markdown = sensitivity.markdown()
    assert markdown.startswith("### Sensitivity, cifar_resnet8 (AAAI 2022 Table 1")
    assert len({len(line) for line in markdown.splitlines() if line.startswith("|")}) == 1  # aligned columns
    records = list(csv.DictReader(io.StringIO(sensitivity.csv())))
    assert records[0]["method"] == "ig" and float(records[0]["none_mean"]) == pytest.approx(0.5333333)
    assert records[0]["none_per_seed"] == "0:0.5;1:0.6;2:0.5" and float(records[0]["none_repeat_std"]) == 0.01
    assert records[0]["held_resnet_gt_gaussian_gt_attribution"] == "True"
    assert records[0]["held_resnet_gt_gaussian_gt_attribution_seeds"] == "2/3"

    sic = report["sic"]
    assert [row[1:3] for row in sic.rows] == [
        ["ResNet", "Gradients"],
        ["ResNet", "IG"],
        ["Gaussian SDE", "IG"],
        ["attribution SDE", "IG"],
        ["input noise", "IG"],
    ]  # no IG + NT
    assert (
        "ResNet < Gaussian SDE < attribution SDE (SIC of IG, higher is better; AAAI 2022 Table 2): "
        "yes (3/3 seeds)" in sic.notes[0]
    )


def test_the_input_noise_baseline_is_a_column_with_its_own_verdict():
    results = _results() + [
        tables.ModelResult("cifar_resnet8", "input", seed, {"sensitivity_ig": 0.45 + seed / 10, "sic_ig": 0.1})
        for seed in range(3)
    ]
    sensitivity = tables.sensitivity_table(results, "cifar_resnet8", ["ig"])
    assert sensitivity.rows[0][4] == "0.55 ± 0.1"
    assert sensitivity.rows[0][-1] == "yes (3/3 seeds)"  # input noise more sensitive than Gaussian in every seed
    assert sensitivity.notes[3].startswith("input > Gaussian (lower sensitivity is better; the input-noise baseline")
    sic = tables.sic_table(results, ["cifar_resnet8"], ["ig"])
    assert sic.rows[-1][1:] == ["input noise", "IG", "0.1 ± 0"]


def test_missing_models_leave_dashes_and_no_verdict():
    results = [r for r in _results() if r.mode != "attribution" and r.seed == 0]
    sensitivity = tables.sensitivity_table(results, "cifar_resnet8", ["ig"])
    assert sensitivity.rows[0][1:] == [
        "0.5",
        "0.4",
        tables.MISSING,
        tables.MISSING,
        *[tables.MISSING] * (len(noise_mode_names()) - 4),  # the robust-training baselines
        "yes (1/1 seeds)",
        "n/a",
        "n/a",
        "n/a",
    ]
    assert tables.localisation_table([r for r in results if r.arch == "other"], "other", ["ig"]) is None


def test_a_claim_whose_mode_the_grid_lacks_is_not_tested_rather_than_held_for_none():
    results = [r for r in _results() if r.mode != "attribution"]  # no attribution SDE, no input noise
    notes = tables.sensitivity_table(results, "cifar_resnet8", ["ig", "saliency"]).notes
    assert notes[0].endswith("held on the means for 1 of 2 methods, in every seed for 1")  # both modes there
    assert notes[1] == (
        "Gaussian > attribution (lower sensitivity is better; the AAAI 2022 claim): not tested "
        "(no attribution SDE models in this grid)"
    )
    assert notes[2].endswith("AAAI 2022 Table 1 claim): not tested (no attribution SDE models in this grid)")
    assert notes[3].endswith("input-noise baseline claim): not tested (no input noise models in this grid)")
    assert "of 2 methods" not in " ".join(notes[1:4])
    sic = tables.sic_table(results, ["cifar_resnet8"], ["ig"]).notes[0]
    assert sic == (
        "cifar_resnet8: ResNet < Gaussian SDE < attribution SDE (SIC of IG, higher is better; AAAI 2022 "
        "Table 2): not tested; ResNet < Gaussian SDE: yes (3/3 seeds); Gaussian SDE < attribution SDE: "
        "not tested"
    )
    # the mode is there but one method has no result for it: counted over the methods tested, the rest named
    partial = [
        r
        if r.mode != "gaussian"
        else replace(r, metrics={k: v for k, v in r.metrics.items() if not k.startswith("sensitivity_saliency")})
        for r in _results()
    ]
    note = tables.sensitivity_table(partial, "cifar_resnet8", ["ig", "saliency"]).notes[0]
    assert note.endswith(
        "held on the means for 1 of 1 methods, in every seed for 1; not tested for Saliency "
        "(a model it needs has no result)"
    )


def test_repeated_evaluation_is_the_mean_and_std_of_seeded_repeats(digits_model, tmp_path):
    model, splits = digits_model
    cfg = EvalConfig(
        methods=("ig", "saliency"),
        num_images=6,
        n_steps=4,
        n_perturbations=2,
        saturation_images=2,
        grid_images=2,
        seed=3,
    )
    result = evaluate_repeated(model, splits, cfg, repeats=2, out_dir=str(tmp_path), progress=False)
    single = [evaluate(model, splits, replace(cfg, seed=seed), progress=False).metrics for seed in (3, 4)]
    for name in ("sensitivity_ig", "sic_valid_fraction_saliency", "infidelity_ig"):
        values = [m[name] for m in single]
        assert result.metrics[name] == pytest.approx(sum(values) / 2)
        assert result.metrics[f"{name}_std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert single[0]["sensitivity_ig"] != single[1]["sensitivity_ig"]  # the repeats differ
    with open(tmp_path / REPEATS_FILE) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["seed"]) for r in rows] == [3, 4]
    assert float(rows[1]["sensitivity_ig"]) == pytest.approx(single[1]["sensitivity_ig"])
    assert evaluate_repeated(model, splits, cfg, repeats=1, progress=False).metrics == single[0]


def _paired_results() -> list[tables.ModelResult]:
    """Plain and Gaussian models of seeds 0-2, attribution models of seeds 0 and 1: (val accuracy, IG sensitivity,
    SIC)."""
    values = {
        "none": {0: (0.90, 0.50, 0.10), 1: (0.92, 0.60, 0.12), 2: (0.91, 0.55, 0.11)},
        "gaussian": {0: (0.89, 0.40, 0.12), 1: (0.90, 0.45, 0.141), 2: (0.92, 0.50, 0.129)},
        "attribution": {0: (0.88, 0.45, 0.20), 1: (0.93, 0.50, 0.20)},
    }
    return [
        tables.ModelResult("cifar_resnet8", mode, seed, {"val_accuracy": a, "sensitivity_ig": s, "sic_ig": c})
        for mode, seeds in values.items()
        for seed, (a, s, c) in seeds.items()
    ]


def test_paired_differences_are_noisy_minus_plain_per_seed_with_a_paired_t_test():
    table = tables.paired_table(_paired_results(), ["cifar_resnet8"], ["ig"])
    assert table.name == "paired_differences"
    assert table.header == [
        "Architecture",
        "Model",
        "Metric",
        "better",
        "Noisy − plain",
        "better in",
        "t",
        "p",
        "p (Holm)",
    ]
    assert [row[1:4] for row in table.rows] == [
        ["Gaussian SDE", "val accuracy", "higher"],
        ["Gaussian SDE", "sensitivity IG", "lower"],
        ["Gaussian SDE", "SIC (IG)", "higher"],
        ["attribution SDE", "val accuracy", "higher"],
        ["attribution SDE", "sensitivity IG", "lower"],
        ["attribution SDE", "SIC (IG)", "higher"],
    ]
    accuracy, sensitivity, sic = table.rows[:3]
    assert accuracy[4:6] == ["-0.00667 ± 0.015", "1/3"]  # -0.01, -0.02, +0.01
    # -0.10, -0.15, -0.05: t = mean / (std / sqrt(3)) = -2 sqrt(3); two-sided p with 2 degrees of freedom
    assert sensitivity[4:8] == ["-0.1 ± 0.05", "3/3", "-3.46", "0.0742"]
    assert sic[5] == "3/3" and float(sic[7]) < 0.001  # +0.02, +0.021, +0.019
    assert table.rows[4][4:6] == ["-0.075 ± 0.035", "2/2"]  # attribution: seeds 0 and 1 only
    record = next(r for r in table.records if r["mode"] == "gaussian" and r["metric"] == "sensitivity_ig")
    assert record["difference_per_seed"] == "0:-0.1;1:-0.15;2:-0.05" and record["n_seeds"] == 3
    assert record["t"] == pytest.approx(-2 * math.sqrt(3)) and record["p"] == pytest.approx(1 - math.sqrt(12 / 14))
    p = [r["p"] for r in table.records]
    assert [r["p_holm"] for r in table.records] == pytest.approx(holm(p))
    # sorted p: Gaussian SIC 0.00083, attribution SIC 0.0704, this one 0.0742, ...: the third of 6 tests, so
    # max(6 x 0.00083, 5 x 0.0704, 4 x 0.0742) = 5 x 0.0704 (the step-down's running maximum)
    attribution_sic = next(r for r in table.records if r["mode"] == "attribution" and r["metric"] == "sic_ig")
    assert record["p_holm"] == pytest.approx(5 * attribution_sic["p"]) and sensitivity[8] == "0.352"
    assert sic[8] == "0.00499" and table.rows[0][8] == "1"  # 6 x 0.000832; accuracy 2 x 0.529 capped at 1
    assert "Holm's step-down method over all 6 tests" in table.notes[0]
    assert "more training together" in table.notes[0]
    assert (
        table.notes[1]
        == "1 of 6 tested differences have p < 0.05 uncorrected, 1 after Holm's correction for the 6 tests"
    )
    one_seed = tables.paired_table([r for r in _paired_results() if r.seed == 0], ["cifar_resnet8"], ["ig"])
    assert one_seed.rows[1][4:] == ["-0.1", "1/1", tables.MISSING, tables.MISSING, tables.MISSING]
    assert (
        one_seed.notes[1]
        == "0 of 0 tested differences have p < 0.05 uncorrected, 0 after Holm's correction for the 0 tests"
    )


def test_paired_differences_are_taken_against_the_plain_control_where_the_grid_has_one():
    # the plain controls: the plain models of seeds 0 and 1 fine-tuned as long as the noisy ones, IG sensitivity
    # 0.45 and 0.48; seed 2's control did not finish, so its pairs drop out
    controls = [
        tables.ModelResult("cifar_resnet8", tables.PLAIN_CONTROL, seed, {"val_accuracy": a, "sensitivity_ig": s})
        for seed, (a, s) in {0: (0.91, 0.45), 1: (0.93, 0.48)}.items()
    ]
    table = tables.paired_table(_paired_results() + controls, ["cifar_resnet8"], ["ig"])
    assert [row[1] for row in table.rows] == ["Gaussian SDE"] * 3 + ["attribution SDE"] * 3  # no row of its own
    assert table.rows[1][4:6] == ["-0.04 ± 0.014", "2/2"]  # 0.40 - 0.45, 0.45 - 0.48: not the stage-1 -0.1
    assert table.rows[4][4:6] == ["+0.01 ± 0.014", "0/2"]  # attribution: 0.45 - 0.45, 0.50 - 0.48
    assert table.rows[2][4:6] == [tables.MISSING, "0/0"]  # the controls have no SIC
    record = next(r for r in table.records if r["mode"] == "gaussian" and r["metric"] == "sensitivity_ig")
    assert record["reference"] == tables.PLAIN_CONTROL and record["difference_per_seed"] == "0:-0.05;1:-0.03"
    assert "minus the plain control" in table.notes[0] and "the noise's alone" in table.notes[0]
    assert "more training together" not in table.notes[0]
    before = tables.paired_table(_paired_results(), ["cifar_resnet8"], ["ig"])  # a grid from before the control
    assert {r["reference"] for r in before.records} == {"none"} and "more training together" in before.notes[0]
    assert "no plain control" in before.notes[0]


def test_the_report_tells_the_plain_control_from_the_stage_1_plain_model_by_its_paired_stage():
    def run(mode, **params):
        data = SimpleNamespace(
            params={"arch": "cifar_resnet8", "noise_mode": mode, "seed": "0", **params},
            metrics={"val_accuracy": 0.9},
            tags={"nsde.status": "finished"},
        )
        return SimpleNamespace(data=data, info=SimpleNamespace(run_id=mode))

    runs = [
        run("none", paired_stage="plain"),
        run("none", paired_stage="finetune"),
        run("gaussian", paired_stage="finetune"),
        run("none"),  # a grid that is not paired
    ]
    no_artifacts = SimpleNamespace(list_artifacts=lambda run_id: [])
    modes = [r.mode for r in model_results(SimpleNamespace(trial_runs=lambda: runs, client=no_artifacts))]
    assert modes == ["none", tables.PLAIN_CONTROL, "gaussian", "none"]


def test_holm_adjusts_step_down_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 of m = 4: 4 x 0.01 = 0.04, 3 x 0.02 = 0.06, 2 x 0.03 = 0.06, 1 x 0.04 = 0.04 -> 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # NaN is no test (m = 3): 3 x 0.001, 2 x 0.3 = 0.6, then 1 x 0.5 raised to the running maximum 0.6
    adjusted = holm([0.5, math.nan, 0.001, 0.3])
    assert math.isnan(adjusted[1]) and [adjusted[i] for i in (0, 2, 3)] == pytest.approx([0.6, 0.003, 0.6])
    assert holm([0.7, 0.6]) == [1.0, 1.0]  # 2 x 0.6 capped at 1, and 0.7 raised to it
    assert holm([]) == [] and holm([0.2]) == [0.2]


def test_the_accuracy_table_shows_the_effective_sigma_from_the_noise_energy():
    def run(mode, sigma, energy):
        return SimpleNamespace(
            data=SimpleNamespace(
                params={"noise_mode": mode, "noise_sigma": str(sigma)},
                metrics={"val_accuracy": 0.9, "noise_energy": energy},
            )
        )

    runs = {
        "none": run("none", 0.0, 0.0),
        "gaussian": run("gaussian", 0.5, 1.0),
        "attribution": run("attribution", 0.5, 0.09),
    }
    results = [tables.ModelResult("cifar_resnet8", mode, 0, run_metrics(r)) for mode, r in runs.items()]
    assert results[2].metrics["effective_sigma"] == pytest.approx(0.15)  # 0.5 * sqrt(0.09)
    assert "effective_sigma" not in run_metrics(SimpleNamespace(data=SimpleNamespace(params={}, metrics={})))
    table = tables.accuracy_table(results, ["cifar_resnet8"])
    assert table.header[:3] == ["Architecture", "Quantity", "ResNet"]
    assert table.rows == [
        ["cifar_resnet8", "val accuracy", "0.9", "0.9", "0.9", *[tables.MISSING] * (len(noise_mode_names()) - 3)],
        ["cifar_resnet8", "effective sigma", "0", "0.5", "0.15", *[tables.MISSING] * (len(noise_mode_names()) - 3)],
    ]
    assert table.records[0]["attribution_effective_sigma_mean"] == pytest.approx(0.15)


def test_paired_fine_tunes_start_from_the_plain_model_of_their_arch_and_seed():
    from ray.tune.search.variant_generator import generate_variants

    from nsde_ray.paired import finetune_space, finetune_stage, plain_stage

    bases = {
        "/ray/g/plain/train/trial_a/checkpoint_1": ("cifar_resnet8", 0),
        "/ray/g/plain/train/trial_b/checkpoint_1": ("cifar_resnet14", 1),
    }
    cfg = PaperTablesConfig(
        name="g", storage="/ray", noise_modes=("none", "gaussian", "attribution"), paired=True, finetune_epochs=2
    )
    assert cfg.grid_size == 3 * 3 and cfg.parent_params()["paired"] == "true"
    plain, finetune = plain_stage(cfg), finetune_stage(cfg)
    assert (plain.storage, plain.name, plain.noise_modes, plain.base.train.epochs) == ("/ray/g", "plain", ("none",), 6)
    assert (finetune.name, finetune.noise_modes, finetune.base.train.epochs) == (
        "finetune",
        ("none", "gaussian", "attribution"),
        2,
    )
    trials = [config for _, config in generate_variants(finetune_space(bases, finetune.noise_modes))]
    assert len(trials) == 6
    for trial in trials:
        assert (trial["arch"], trial["seed"]) == bases[trial["init_from"]]
    # every (arch, seed) gets its plain control: the plain model fine-tuned as long as the noisy ones
    assert sorted((t["arch"], t["seed"]) for t in trials if t["noise_mode"] == "none") == sorted(bases.values())


def test_paired_runs_are_marked_with_their_stage_from_where_they_started():
    from nsde_ray.paired import FINETUNE, PLAIN, mark_runs, stage_of

    cfg = PaperTablesConfig(name="g", storage="/ray", noise_modes=("none", "gaussian"), paired=True, finetune_epochs=2)
    checkpoint = "/ray/g/plain/train/trial_a/checkpoint_1"
    assert stage_of(cfg, {"noise_mode": "none", "init_from": "None"}) == PLAIN  # from scratch: stage 1
    assert stage_of(cfg, {"noise_mode": "none", "init_from": checkpoint}) == FINETUNE  # the control
    warm = replace(cfg, base=replace(cfg.base, train=replace(cfg.base.train, init_from="/weights/start.pt")))
    assert stage_of(warm, {"noise_mode": "none", "init_from": "/weights/start.pt"}) == PLAIN  # the grid's own start
    assert stage_of(warm, {"noise_mode": "gaussian", "init_from": checkpoint}) == FINETUNE

    logged = {}
    runs = {
        run_id: SimpleNamespace(info=SimpleNamespace(run_id=run_id), data=SimpleNamespace(params=params))
        for run_id, params in {
            "plain": {"noise_mode": "none", "init_from": "None"},
            "control": {"noise_mode": "none", "init_from": checkpoint},
            "noisy": {"noise_mode": "gaussian", "init_from": checkpoint, "paired": "true"},
        }.items()
    }
    client = SimpleNamespace(log_batch=lambda run_id, params: logged.update({run_id: {p.key: p.value for p in params}}))
    mark_runs(SimpleNamespace(trial_runs=lambda: list(runs.values()), client=client), cfg)
    assert logged == {
        "plain": {"paired": "true", "paired_stage": "plain"},
        "control": {"paired": "true", "paired_stage": "finetune", "finetune_epochs": "2"},
        "noisy": {"paired_stage": "finetune", "finetune_epochs": "2"},  # paired already logged
    }


def test_config_round_trips_and_spans_the_grid():
    cfg = PaperTablesConfig(name="g", storage="/tmp", archs=("cifar_resnet8", "resnet18"), seeds=(0, 1, 2))
    assert PaperTablesConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.grid_size == 2 * len(noise_mode_names()) * 3  # archs x every registered noise mode x seeds
    assert cfg.parent_params()["noise_mode"] == ",".join(noise_mode_names())
    assert cfg.parent_params()["repeats"] == 5


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--arch", "cifar_resnet8", "resnet9000"], "arch='resnet9000' is not valid"),
        (["--noise-modes", "none", "brownian"], "noise mode='brownian' is not valid"),
        (["--noise-modes", "none", "none"], "noise_modes must be distinct"),
        (["--sigma", "0"], "sigma (--sigma) must be > 0"),
        (["--seeds", "0", "-1"], "seeds must be integers >= 0"),
        (["--repeats", "0"], "repeats (--repeats) must be an integer >= 1"),
        (["--paired"], "--paired needs --finetune-epochs N"),
        (["--paired", "--finetune-epochs", "1", "--noise-modes", "gaussian", "attribution"], "must include none"),
        (["--finetune-epochs", "2"], "applies to --paired grids only"),
        (["--eval-methods", "saliency"], "must include 'ig'"),
        (["--dataset", "imagefolder", "--data-dir", "/no/such/dir"], "/no/such/dir"),
        (["--name", "never_ran", "--resume"], "no sweep named 'never_ran'"),
        (["--name", "main_sweep", "--resume"], "is a 'sweep' run, not a 'paper_tables' one"),
        (["--name", "main_sweep"], "pass --resume to continue it"),
    ],
)
def test_bad_flags_fail_before_ray_starts(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_state(SweepConfig(name="main_sweep", storage=str(tmp_path / "ray")), {})
    assert_usage_error(
        main,
        flags + ["--storage", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        message,
        capsys,
    )


@pytest.fixture
def ray_for_three_trials():
    """A local Ray with 3 logical CPUs, so that the tiny grid's 3 trials run at once (about 2 minutes on 2 cores)."""
    import ray

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_tiny_grid_end_to_end_then_resume_rerenders_without_training(
    tmp_path, ray_for_three_trials, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--storage", str(tmp_path / "ray"), "--name", "tiny", "--tracking-uri", uri]
    assert main(flags + ["--smoke-test"]) == 0
    output = capsys.readouterr().out
    modes = len(noise_mode_names())  # the papers' three noise modes and the baselines
    assert f"{modes} trials, {modes} evaluated, 0 failed" in output
    for heading in (
        "### Validation accuracy",
        "### Sensitivity, cifar_resnet8 (AAAI 2022 Table 1",
        "### SIC (AAAI 2022 Table 2",
        "### Localisation AUC, cifar_resnet8",
    ):
        assert heading in output
    assert "| IG + NT" in output and "| DeepSHAP" in output and " seeds)" in output
    tables_dir = tmp_path / "tables" / "tiny"
    assert sorted(os.listdir(tables_dir)) == sorted(
        ["paper_tables.md"]
        + [
            f"{name}.{suffix}"
            for name in ("accuracy", "sensitivity_cifar_resnet8", "sic", "localisation_cifar_resnet8")
            for suffix in ("md", "csv")
        ]
    )

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags["nsde.role"] == "sweep")
    children = [r for r in runs if r.data.tags["nsde.role"] == "trial"]
    assert parent.data.tags["nsde.kind"] == "paper_tables" and parent.data.params["repeats"] == "2"
    assert sorted(r.data.params["noise_mode"] for r in children) == sorted(noise_mode_names())
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["nsde.status"] == "finished"
        # every method's metrics (SIC itself is NaN, so not logged, where no image gives a valid curve)
        assert {
            f"{metric}_{method}"
            for metric in ("sensitivity", "sic_valid_fraction")
            for method in ("ig", "ig_nt", "saliency", "deeplift", "deepshap")
        } <= set(run.data.metrics)
        # scored on the candidates it classifies correctly, of the same ones for every model
        candidates = SMOKE_EVAL["num_images"]
        assert "sensitivity_deepshap_std" in run.data.metrics and 1 <= run.data.metrics["eval_images"] <= candidates
        assert {REPEATS_FILE, ARTIFACT_PER_IMAGE} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "common images: sensitivity, SIC and localisation are scored on the " in output
    assert f"of {SMOKE_EVAL['num_images']} candidate images (per evaluation repeat)" in output
    assert "no per-image record" not in output
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "paper_tables")}
    assert {
        "paper_tables/paper_tables.md",
        "paper_tables/sic.csv",
        "paper_tables/sensitivity_cifar_resnet8.md",
    } <= logged

    assert main(flags + ["--resume", "--out-dir", str(tmp_path / "again")]) == 0
    assert f"{modes} trials, {modes} evaluated, 0 failed" in capsys.readouterr().out
    assert (tmp_path / "again" / "paper_tables.md").read_text() == (tables_dir / "paper_tables.md").read_text()
    assert len(client.search_runs([experiment.experiment_id])) == modes + 1  # nothing trained or logged twice


@pytest.mark.slow
def test_paired_tiny_grid_fine_tunes_each_noisy_model_from_the_plain_one(
    tmp_path, ray_for_three_trials, capsys, monkeypatch
):
    from nsde_ray.train import load_checkpoint

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    flags = ["--storage", str(tmp_path / "ray"), "--name", "pairs", "--tracking-uri", uri]
    grid = ["--smoke-test", "--paired", "--finetune-epochs", "3", "--noise-modes", "none", "gaussian", "attribution"]
    assert main(flags + grid) == 0
    output = capsys.readouterr().out
    assert "4 trials, 4 evaluated, 0 failed" in output  # stage 1: the plain model; stage 2: its control, 2 noisy
    assert "### Paired differences: noisy minus plain" in output and "| effective sigma" in output
    with open(tmp_path / "tables" / "pairs" / "paired_differences.csv") as handle:
        assert {row["reference"] for row in csv.DictReader(handle)} == {tables.PLAIN_CONTROL}

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("pairs")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags["nsde.role"] == "sweep")
    trials = [r for r in runs if r.data.tags["nsde.role"] == "trial"]
    assert parent.data.params["paired"] == "true" and parent.data.params["finetune_epochs"] == "1"  # smoke: capped
    (plain,) = [r for r in trials if r.data.params["paired_stage"] == "plain"]
    children = {r.data.params["noise_mode"]: r for r in trials if r.data.params["paired_stage"] == "finetune"}
    assert set(children) == {"none", "gaussian", "attribution"}  # the plain control among the fine-tunes
    assert plain.data.params["paired"] == "true" and plain.data.metrics["noise_energy"] == 0.0
    assert "finetune_epochs" not in plain.data.params
    base = plain.data.tags["nsde.trial_id"]
    for _mode, run in children.items():
        params = run.data.params
        assert params["paired"] == "true" and params["finetune_epochs"] == params["epochs"] == "1"
        assert params["init_from"].startswith(str(tmp_path / "ray" / "pairs" / "plain" / "train" / f"trial_{base}"))
        # fine-tuned from the trained plain model: its first epoch starts where the plain model ended
        assert run.data.metrics["train_loss"] < plain.data.metrics["train_loss"]
    checkpoint = load_checkpoint(children["gaussian"].data.params["init_from"])
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["noise"]["mode"] == "none"
    assert children["gaussian"].data.metrics["noise_energy"] == 1.0
    assert 0.0 < children["attribution"].data.metrics["noise_energy"] < 0.5  # raw shaped maps: less noise
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "paper_tables")}
    assert "paper_tables/paired_differences.md" in logged

    assert main(flags + ["--resume", "--out-dir", str(tmp_path / "again")]) == 0
    assert "4 trials, 4 evaluated, 0 failed" in capsys.readouterr().out
    assert len(client.search_runs([experiment.experiment_id])) == 5  # both stages restored, nothing trained twice
