"""The papers' tables of a finished (or partly finished) grid: from its MLflow runs to Markdown and CSV files.

:func:`model_results` reads the grid's finished models from the parent run's children,
:mod:`nsde_ray.tables` builds the tables, :func:`write_tables` writes them (:data:`REPORT_FILE`
holds them all, headed by :func:`protocol`'s account of what was measured).
"""

from __future__ import annotations

import os
import tempfile

from nsde_ray import common_images, tables
from nsde_ray.config import PaperTablesConfig
from nsde_ray.paired import FINETUNE, STAGE_PARAM
from nsde_ray.registry import effective_sigma
from nsde_ray.tracking import STATUS

TABLES_DIR = "paper_tables"  # the parent run's artifact folder
REPORT_FILE = "paper_tables.md"


def model_results(tracker) -> list[tables.ModelResult]:
    """The grid's finished models, from the parent's MLflow child runs (a resumed grid included), each with its
    per-image record where the run logged one."""
    return [
        tables.ModelResult(
            run.data.params["arch"],
            result_mode(run.data.params),
            int(run.data.params["seed"]),
            run_metrics(run),
            per_image_record(tracker.client, run.info.run_id),
        )
        for run in tracker.trial_runs()
        if run.data.tags.get(STATUS) == "finished"
    ]


def per_image_record(client, run_id: str) -> list[common_images.Row] | None:
    """The run's per-image record (:data:`common_images.ARTIFACT_PER_IMAGE`); None where it logged none (a run
    evaluated before there was one)."""
    if not any(entry.path == common_images.ARTIFACT_PER_IMAGE for entry in client.list_artifacts(run_id)):
        return None
    with tempfile.TemporaryDirectory() as folder:
        return common_images.read_csv(client.download_artifacts(run_id, common_images.ARTIFACT_PER_IMAGE, folder))


def result_mode(params: dict[str, str]) -> str:
    """A run's mode in the tables: its noise mode, or :data:`tables.PLAIN_CONTROL` for the plain model that a
    paired grid fine-tuned alongside the noisy ones (:mod:`nsde_ray.paired`)."""
    control = params["noise_mode"] == "none" and params.get(STAGE_PARAM) == FINETUNE
    return tables.PLAIN_CONTROL if control else params["noise_mode"]


def run_metrics(run) -> dict[str, float]:
    """An MLflow run's metrics, with ``effective_sigma`` (:func:`tables.effective_sigma`) where it logged
    noise_energy."""
    metrics = dict(run.data.metrics)
    if "noise_energy" in metrics:
        metrics["effective_sigma"] = effective_sigma(float(run.data.params["noise_sigma"]), metrics["noise_energy"])
    return metrics


def write_tables(report: list[tables.Table], header: str, out_dir: str) -> str:
    """Each table as ``<name>.md`` and ``<name>.csv``, all of them in :data:`REPORT_FILE`; returns the report's text."""
    os.makedirs(out_dir, exist_ok=True)
    text = header + "\n" + "\n".join(table.markdown() for table in report)
    for table in report:
        for suffix, content in ((".md", table.markdown()), (".csv", table.csv())):
            with open(os.path.join(out_dir, table.name + suffix), "w", newline="") as handle:
                handle.write(content)
    with open(os.path.join(out_dir, REPORT_FILE), "w") as handle:
        handle.write(text)
    return text


def protocol(cfg: PaperTablesConfig, finished: int) -> str:
    """What the tables measured, in a sentence: the header of the report."""
    base = cfg.base
    controls = len(cfg.archs) * len(cfg.seeds) if cfg.paired else 0
    return (
        f"{finished} of {cfg.grid_size + controls} models finished: {', '.join(cfg.archs)} on {base.data.dataset}, "
        f"noise modes {', '.join(cfg.noise_modes)} (sigma {base.noise.sigma}), seeds "
        f"{', '.join(map(str, cfg.seeds))}, {base.train.epochs} epochs"
        + (
            f" for the plain models, each noisy model and a plain control fine-tuned from the plain model of its "
            f"seed for {cfg.finetune_epochs} epochs (paired)"
            if cfg.paired
            else ""
        )
        + f". Each model evaluated {cfg.repeats} times, each time on the candidates it classifies correctly among "
        f"the same {base.eval.num_images} candidate test images for every model (evaluation seeds {base.eval.seed} "
        f"to {base.eval.seed + cfg.repeats - 1}); the tables compare sensitivity, SIC and localisation on the "
        "candidates every model of an architecture and training seed classifies correctly (their notes say how "
        f"many): IG {base.eval.n_steps} steps, IG + NT {base.eval.nt_samples} "
        f"samples, DeepSHAP {base.eval.deepshap_baselines} baselines, sensitivity radius "
        f"{base.eval.sensitivity_radius} with {base.eval.n_perturbations} perturbations. A cell is the mean over "
        "seeds of each model's mean over repeats; ± is the std across seeds.\n"
    )
