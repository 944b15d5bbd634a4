"""MLflow records of a sweep: one parent run, one nested child run per trial, the Pareto front.

Names (the MLflow contract, docs/mlflow.md): the parent has tag ``nsde.role = sweep``; each trial (one
configuration) a child run (tag ``mlflow.parentRunId``) with ``nsde.role = trial``,
``nsde.trial_id`` (Ray Tune's trial id, which a resumed trial keeps, so a resume re-opens the run
instead of duplicating it), ``nsde.status`` (running, finished, diverged or failed),
``pareto_front`` (true or false) and ``pareto_confidence`` (the probability of being on the front,
:mod:`nsde_ray.front`). A configuration trained with several seeds has one run per seed nested under
its run (``nsde.role = seed``, ``nsde.seed_index``), and holds the means over seeds with
``<name>_std`` and ``<name>_se`` (:func:`nsde_ray.aggregate.aggregate_seeds`).
Everything goes through :class:`mlflow.MlflowClient` with run ids we control; credentials come
from MLflow's own environment variables (``MLFLOW_TRACKING_USERNAME`` ...).
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from nsde_ray import front
from nsde_ray.front_table import front_markdown
from nsde_ray.mlflow_uri import TrackingError, mask_uri, redact, store_creation_lock
from nsde_ray.registry import effective_sigma, front_params, objective_names, unused_params

ROLE, TRIAL_ID, STATUS, SWEEP = "nsde.role", "nsde.trial_id", "nsde.status", "nsde.sweep"
PARENT = "mlflow.parentRunId"
TRAIN_NODES = "nsde.train_nodes"
PARETO_TAG, CONFIDENCE_TAG, EXCLUDED_TAG = "pareto_front", "pareto_confidence", "front_excluded"
SEED_INDEX = "nsde.seed_index"
SEARCHED_TAG = "nsde.searched_params"  # a configuration's searched params as the searcher gave them (JSON)
# The experiment's kind (MLflow lists it as machine learning); MLflow 3.17's UI ignores it when it opens an
# experiment: its sidebar toggle (GenAI by default) or the URL's workflowType decides (front_url).
EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
FRONT_FILTER = f"tags.{PARETO_TAG} = 'true'"
# MLflow's Chart view has a section per metric-name prefix, the prefixed ones first (alphabetically), then the
# unprefixed "Model metrics": the objectives (and their _se) are also logged under this prefix, so their charts
# come first. The flat names are kept for one release: Tune, Optuna and the dashboards read them.
OBJECTIVES_SECTION = "objectives/"
FRONT_CSV, FRONT_HTML, FRONT_PNG = "pareto_front.csv", "pareto_front.html", "pareto_front.png"
MODEL_DIR = "model"
FRONT_METRICS = (
    "sic_valid_fraction_ig",
    "randomisation_passed_ig",
    "randomisation_similarity_ig",
    "noise_energy",
    "train_time_s",
    "sensitivity_ig_nt",
    "sensitivity_ig_nt_se",
)
MODES_PARAM = "noise_modes"  # the sweep run's param: the noise modes it searches, comma-separated
MODE_VERDICTS_CSV = "mode_verdicts.csv"


def _metrics(values: dict[str, float], step: int = 0, timestamp: int | None = None) -> list[Metric]:
    import time

    now = timestamp or int(time.time() * 1000)
    return [
        Metric(key, float(value), now, step)
        for key, value in dict(values, **grouped_objectives(values)).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


def grouped_objectives(metrics: dict[str, Any]) -> dict[str, Any]:
    """The objectives among ``metrics``, and their ``<name>_se``, under :data:`OBJECTIVES_SECTION`."""
    names = set(objective_names())
    return {
        OBJECTIVES_SECTION + key: value
        for key, value in metrics.items()
        if key in names or key.removesuffix("_se") in names
    }


def front_url(experiment_id: str, base: str = "") -> str:
    """The front in MLflow's UI (``base``: the server's address; empty: a link from a page of that UI).

    The experiment's training runs (workflowType) filtered by :data:`FRONT_FILTER`, sorted by val_accuracy: with
    any sort but by creation time the UI lists the matched runs at the top level, while sorted by creation time
    (its default) it nests them under their sweep's run, collapsed.
    """
    import urllib.parse

    query = urllib.parse.urlencode(
        {
            "workflowType": "machine_learning",
            "searchFilter": FRONT_FILTER,
            "orderByKey": "metrics.`val_accuracy`",
            "orderByAsc": "false",
        },
        quote_via=urllib.parse.quote,
    )
    return f"{base.rstrip('/') + '/' if base else ''}#/experiments/{experiment_id}/runs?{query}"


def _experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (as a training experiment) if there is none yet."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, tags={EXPERIMENT_KIND: TRAINING_KIND})
    except Exception:  # another command created it in between (a server answers RESOURCE_ALREADY_EXISTS)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class SweepTracker:
    """The MLflow side of one sweep; cheap to rebuild in any Ray process from (uri, experiment_id, parent_run_id)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.client = MlflowClient(tracking_uri)

    @classmethod
    def start(cls, tracking_uri: str, experiment_name: str, sweep_name: str, params: dict[str, Any]) -> SweepTracker:
        """Create the experiment (if new) and the sweep's parent run.

        Two commands that start together may both find the experiment missing: the one whose creation is
        refused takes the experiment the other made.
        """
        client = MlflowClient(tracking_uri)
        try:
            with store_creation_lock(tracking_uri):
                experiment_id = _experiment_id(client, experiment_name)
            run = client.create_run(experiment_id, run_name=sweep_name, tags={ROLE: "sweep", SWEEP: sweep_name})
        except Exception as err:  # connection refused, bad URI, permissions: MLflow raises many kinds
            raise TrackingError(
                f"cannot use the MLflow tracking store {mask_uri(tracking_uri)!r}: {redact(str(err), tracking_uri)}"
            ) from err
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return cls(tracking_uri, experiment_id, run.info.run_id)

    def describe(self) -> dict[str, str]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
        }

    def reopen_parent(self) -> None:
        """Mark the parent running again (a resumed sweep)."""
        self.client.update_run(self.parent_run_id, status="RUNNING")

    # --- trials -------------------------------------------------------------------------------

    def trial_runs(self) -> list:
        """Every child run of the sweep."""
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.{PARENT} = '{self.parent_run_id}'", max_results=50_000
        )

    def open_trial(self, trial_id: str, params: dict[str, Any]) -> tuple[str, str]:
        """The child run of ``trial_id``: (run id, nsde.status); created with its params if new."""
        return self._open(
            f"tags.{PARENT} = '{self.parent_run_id}' and tags.`{TRIAL_ID}` = '{trial_id}'",
            f"trial_{trial_id}",
            {PARENT: self.parent_run_id, ROLE: "trial", TRIAL_ID: trial_id, PARETO_TAG: "false"},
            params,
        )

    def open_seed(self, trial_run_id: str, trial_id: str, index: int, params: dict[str, Any]) -> tuple[str, str]:
        """The run of seed ``index`` of a configuration, nested under its run: (run id, nsde.status)."""
        return self._open(
            f"tags.{PARENT} = '{trial_run_id}' and tags.`{SEED_INDEX}` = '{index}'",
            f"trial_{trial_id}_seed{index}",
            {PARENT: trial_run_id, ROLE: "seed", TRIAL_ID: trial_id, SEED_INDEX: str(index)},
            params,
        )

    def _open(self, filter_string: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> tuple[str, str]:
        """The run ``filter_string`` finds, marked running unless it ended well, or a new one; (run id, nsde.status).

        MLflow's client retries every request, a run's creation included, after a read timeout: a slow server
        can create the run twice. So a new run is looked up again, and only the oldest of the matches is kept
        (the others, empty copies, are deleted)."""
        existing = self.client.search_runs([self.experiment_id], filter_string=filter_string)
        if existing:
            run = _oldest(existing)
            if run.data.tags.get(STATUS) not in ("finished", "diverged"):
                self.client.update_run(run.info.run_id, status="RUNNING")
                self.client.set_tag(run.info.run_id, STATUS, "running")
            return run.info.run_id, run.data.tags.get(STATUS, "running")
        self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags, **{STATUS: "running"}))
        created = self.client.search_runs([self.experiment_id], filter_string=filter_string)
        run = _oldest(created)
        for copy in created:
            if copy.info.run_id != run.info.run_id:
                self.client.delete_run(copy.info.run_id)
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id, "running"

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
        self.client.log_batch(run_id, metrics=_metrics(metrics, step=epoch))

    def log_missing_epochs(self, run_id: str, epochs: list[dict[str, Any]], key: str = "train_loss") -> list[int]:
        """Log each of ``epochs`` (per-epoch metrics with an ``epoch``) whose ``key`` the run has no step for yet;
        returns the epochs logged."""
        have = {metric.step for metric in self.client.get_metric_history(run_id, key)}
        logged = []
        for metrics in sorted(epochs, key=lambda m: int(m["epoch"])):
            epoch = int(metrics["epoch"])
            if epoch not in have and epoch not in logged:
                self.log_epoch(run_id, metrics, epoch)
                logged.append(epoch)
        return logged

    def add_train_node(self, run_id: str, node_id: str) -> None:
        """Add the Ray node that ran rank 0 to the run's ``nsde.train_nodes`` tag (comma-separated)."""
        nodes = self.client.get_run(run_id).data.tags.get(TRAIN_NODES, "")
        if node_id and node_id not in nodes.split(","):
            self.client.set_tag(run_id, TRAIN_NODES, ",".join(filter(None, [nodes, node_id])))

    def finish_trial(
        self,
        run_id: str,
        status: str,
        metrics: dict[str, float],
        artifact_dir: str | None = None,
        error: str | None = None,
    ) -> None:
        """Final metrics, artifacts and status (finished, diverged or failed) of a trial's run."""
        finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.client.log_batch(run_id, metrics=_metrics(finite, step=int(metrics.get("epoch", 0))))
        if artifact_dir is not None:
            self.client.log_artifacts(run_id, artifact_dir)
        tags = [RunTag(STATUS, status)] + ([RunTag("nsde.error", error[:5000])] if error else [])
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status="FAILED" if status == "failed" else "FINISHED")

    def finished_metrics(self, run_id: str) -> dict[str, float]:
        """A run's metrics by their flat names (without the copies under :data:`OBJECTIVES_SECTION`)."""
        metrics = self.client.get_run(run_id).data.metrics
        return {key: value for key, value in metrics.items() if not key.startswith(OBJECTIVES_SECTION)}

    # --- the Pareto front -----------------------------------------------------------------------

    def front_rows(self) -> list[dict[str, Any]]:
        """One row per finished configuration, assessed by :func:`nsde_ray.front.assess_front`.

        A row holds the run id, trial id, params of note, the objectives' means and standard errors
        (``<name>_se``; NaN with one seed), :data:`FRONT_METRICS`, ``effective_sigma`` and the
        assessment (``excluded``, ``pareto_front``, ``pareto_probability``); front first.
        """
        return self.assess().rows

    def assess(self, runs: list | None = None) -> front.FrontReport:
        """The front over the finished configurations among ``runs`` (default: :meth:`trial_runs`), each row with its
        seeds' own objective values and training seeds (:data:`nsde_ray.front.PER_SEED`, ``SEED_IDS``)."""
        rows, seeds = [], self.seeds_by_configuration()
        for run in self.trial_runs() if runs is None else runs:
            if run.data.tags.get(STATUS) != "finished":
                continue
            metrics, params = run.data.metrics, run.data.params
            row = {"run_id": run.info.run_id, "trial_id": run.data.tags.get(TRIAL_ID, "")}
            row.update({name: params.get(name, "") for name in front_params()})
            row.update({name: "" for name in unused_params(row["noise_mode"])})  # unused defaults in this row
            for name in objective_names():  # non-finite values are not logged: NaN here, kept off the front
                row[name], row[f"{name}_se"] = metrics.get(name, math.nan), metrics.get(f"{name}_se", math.nan)
            row.update({name: metrics.get(name, math.nan) for name in FRONT_METRICS})
            row["seeds"] = metrics.get("seeds", 1.0)  # a one-seed configuration logs no count
            row["effective_sigma"] = effective_sigma(params.get("noise_sigma", ""), row["noise_energy"])
            own = seeds.get(run.info.run_id) or [run]  # one seed per configuration: the run is its seed's
            row[front.PER_SEED] = [seed.data.metrics for seed in own]
            row[front.SEED_IDS] = [int(seed.data.params.get("seed", index)) for index, seed in enumerate(own)]
            rows.append(row)
        report = front.assess_front(rows, modes=self.searched_modes())
        rows.sort(key=lambda row: (not row["pareto_front"], -row["pareto_probability"], -row["val_accuracy"]))
        return report

    def seeds_by_configuration(self, finished: bool = True) -> dict[str, list]:
        """The seed runs in the sweep's experiment (``finished`` ones only, or all), by the run id of their
        configuration, in seed order."""
        only_finished = f" and tags.`{STATUS}` = 'finished'" if finished else ""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE}` = 'seed'{only_finished}", max_results=50_000
        )
        by_configuration: dict[str, list] = {}
        for run in sorted(runs, key=lambda run: int(run.data.tags.get(SEED_INDEX, 0))):
            by_configuration.setdefault(run.data.tags.get(PARENT, ""), []).append(run)
        return by_configuration

    def searched_modes(self) -> tuple[str, ...]:
        """The noise modes the sweep searches (its run's :data:`MODES_PARAM`; none for a sweep from before it)."""
        modes = self.client.get_run(self.parent_run_id).data.params.get(MODES_PARAM, "") if self.parent_run_id else ""
        return tuple(mode for mode in modes.split(",") if mode)

    def seed_runs(self, trial_run_id: str) -> list:
        """The seed runs nested under a configuration's run, by seed index (none with one seed per configuration)."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.{PARENT} = '{trial_run_id}' and tags.`{ROLE}` = 'seed'"
        )
        return sorted(runs, key=lambda run: int(run.data.tags.get(SEED_INDEX, 0)))

    def update_front(self, notes: Sequence[str] = ()) -> front.FrontReport:
        """Recompute the front over finished configurations; retag every trial; log front files, hypervolume, notes
        (the front's own and ``notes``)."""
        from nsde_ray import plots

        runs = self.trial_runs()
        report = self.assess(runs)
        report.notes.extend(notes)
        rows = report.rows
        assessed = {row["run_id"]: row for row in rows}
        for run in runs:
            row = assessed.get(run.info.run_id, {"pareto_front": False, "pareto_probability": 0.0, "excluded": ""})
            tags = {
                PARETO_TAG: "true" if row["pareto_front"] else "false",
                CONFIDENCE_TAG: f"{row['pareto_probability']:.2f}",
            }
            if row["excluded"]:
                tags[EXCLUDED_TAG] = row["excluded"]
            changed = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
            if changed:
                self.client.log_batch(run.info.run_id, tags=changed)
        if not rows:
            return report
        step = len(rows)
        summary = {
            "hypervolume": report.hypervolume(),
            "finished_trials": len(rows),
            "front_size": sum(row["pareto_front"] for row in rows),
        }
        for name, (floor, spread, _) in report.floors.items():
            summary.update({f"noise_floor_{name}": floor, f"range_{name}": spread})
        self.client.log_batch(self.parent_run_id, metrics=_metrics(summary, step=step))
        self.client.log_batch(
            self.parent_run_id,
            tags=[
                RunTag("front_objectives", ",".join(name for name, _ in report.objectives)),
                RunTag("noise_floor_flagged", ",".join(report.flagged) or "none"),
                RunTag("mlflow.note.content", self._description(report)),
            ],
        )
        with tempfile.TemporaryDirectory() as folder:
            _write_csv(os.path.join(folder, FRONT_CSV), rows)
            _write_csv(os.path.join(folder, MODE_VERDICTS_CSV), report.modes.csv_rows())
            plots.pareto_html(os.path.join(folder, FRONT_HTML), rows)
            plots.pareto_png(os.path.join(folder, FRONT_PNG), rows)
            self.client.log_artifacts(self.parent_run_id, folder)
        return report

    def _description(self, report: front.FrontReport) -> str:
        """The sweep run's description: the front and the per-mode report, within MLflow's tag length (the
        per-mode report gives way to a pointer at its CSV when both do not fit)."""
        table = front_markdown(report, front_url(self.experiment_id))
        whole = table + "\n" + report.modes.to_markdown()
        if len(whole) <= MAX_TAG_VAL_LENGTH:
            return whole
        return table + f"\nThe per-mode fronts and verdicts are in `{MODE_VERDICTS_CSV}` (too long for here)."

    def finish_sweep(self) -> None:
        self.client.set_terminated(self.parent_run_id, status="FINISHED")


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    """``rows`` as a CSV file, the first row's keys as the header (an empty file for no rows)."""
    with open(path, "w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _oldest(runs: list):
    """The first created of ``runs`` (MLflow runs): by start time, then run id."""
    return min(runs, key=lambda run: (run.info.start_time, run.info.run_id))
