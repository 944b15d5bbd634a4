"""What the plain control changes in a paired papers' grid: differences against the stage-1 plain model and against
the control, from the grid's MLflow runs.

A paired grid (``python -m sweeps.paper_tables --paired``) trains a plain model per training seed (stage 1), then
fine-tunes each noisy mode and a plain control (``none``, no noise) from it for the same epochs. The tables take
each noisy model's difference against the control. This prints, per metric and seed, what the control's extra
plain epochs did (control minus stage-1 plain), and each noisy mode's mean difference against either reference
(± std across seeds, one-sample t-test over the seeds, two-sided, uncorrected).

    python benchmarks/paired_control.py sqlite:////work/runs/paired2/mlflow.db digits_paired_control
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
from scipy import stats

METRICS = ("val_accuracy", "sensitivity_ig", "sensitivity_saliency", "sensitivity_deeplift", "sic_ig")


def grid_metrics(uri: str, experiment: str) -> dict[tuple[str, str, int], dict[str, float]]:
    """(noise mode, paired stage, training seed) -> the configuration run's final metrics."""
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in {uri}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.`nsde.role` = 'trial'", max_results=10_000)
    return {
        (r.data.params["noise_mode"], r.data.params.get("paired_stage", ""), int(r.data.params["seed"])): r.data.metrics
        for r in runs
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tracking_uri")
    parser.add_argument("experiment")
    args = parser.parse_args()
    runs = grid_metrics(args.tracking_uri, args.experiment)
    seeds = sorted({seed for mode, stage, seed in runs if (mode, stage) == ("none", "plain")})
    if not seeds or not all(("none", "finetune", seed) in runs for seed in seeds):
        raise SystemExit("not a paired grid with its plain control: no ('none', 'finetune') run for every seed")

    def values(mode: str, stage: str, metric: str) -> np.ndarray:
        return np.array([runs[(mode, stage, seed)].get(metric, np.nan) for seed in seeds])

    print(f"control minus stage-1 plain, seeds {seeds}:")
    for metric in METRICS:
        diff = values("none", "finetune", metric) - values("none", "plain", metric)
        p = stats.ttest_1samp(diff, 0).pvalue
        per_seed = np.round(diff, 4).tolist()
        print(f"  {metric}: {diff.mean():+.4f} ± {diff.std(ddof=1):.2g} (per seed {per_seed}, p {p:.3f})")
    noisy = sorted({mode for mode, stage, _ in runs if stage == "finetune" and mode != "none"})
    for mode in noisy:
        for metric in METRICS:
            cells = []
            for reference in ("plain", "finetune"):
                diff = values(mode, "finetune", metric) - values("none", reference, metric)
                p = stats.ttest_1samp(diff, 0).pvalue
                cells.append(f"{diff.mean():+.4f} ± {diff.std(ddof=1):.2g} (p {p:.3f})")
            print(f"{mode} {metric}: against stage-1 plain {cells[0]}; against the control {cells[1]}")


if __name__ == "__main__":
    main()
