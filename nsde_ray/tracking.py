"""MLflow records of a sweep: one parent run, one nested child run per trial, the Pareto front.

Names (the contract in DESIGN.md, section 2): the parent has tag ``nsde.role = sweep``; each trial
a child run (tag ``mlflow.parentRunId``) with ``nsde.role = trial``, ``nsde.trial_id`` (Ray Tune's
trial id, which a resumed trial keeps, so a resume re-opens the run instead of duplicating it),
``nsde.status`` (running, finished, diverged or failed) and ``pareto_front`` (true or false).
Everything goes through :class:`mlflow.MlflowClient` with run ids we control; credentials come
from MLflow's own environment variables (``MLFLOW_TRACKING_USERNAME`` ...).
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from nsde_ray import pareto

ROLE, TRIAL_ID, STATUS, SWEEP = "nsde.role", "nsde.trial_id", "nsde.status", "nsde.sweep"
PARENT = "mlflow.parentRunId"
TRAIN_NODES = "nsde.train_nodes"
PARETO_TAG = "pareto_front"
FRONT_FILTER = f"tags.{PARETO_TAG} = 'true'"
FRONT_CSV, FRONT_HTML, FRONT_PNG = "pareto_front.csv", "pareto_front.html", "pareto_front.png"
MODEL_DIR = "model"
FRONT_PARAMS = ("noise_mode", "noise_sigma", "lr", "shaping_method", "shaping_warmup_epochs",
                "shaping_refresh_every", "shaping_clip_percentile")


class TrackingError(RuntimeError):
    """The MLflow store cannot be used as asked; the message says what to do."""


def resolve_tracking_uri(uri: str | None) -> str:
    """An explicit URI every Ray process can use: MLflow's default when ``None``, local paths made absolute."""
    if uri is None:
        import mlflow

        return mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///"):])
    if "://" not in uri:
        return "file://" + os.path.abspath(os.path.expanduser(uri))
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds if a tracking server does not answer its health check (MLflow's client retries for minutes)."""
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout)
    except OSError as err:
        raise TrackingError(f"the MLflow tracking server {uri!r} does not answer ({err}); start it "
                            "(mlflow server ...) or check --tracking-uri") from err


def is_local_store(uri: str) -> bool:
    """Whether only processes on this machine can reach the store (not so an ``http(s)://`` server)."""
    return uri.startswith(("sqlite:", "file:"))


def ui_command(uri: str) -> str:
    """The command that browses ``uri`` (bound to 127.0.0.1, MLflow's default)."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


def _metrics(values: dict[str, float], step: int = 0, timestamp: int | None = None) -> list[Metric]:
    import time

    now = timestamp or int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


class SweepTracker:
    """The MLflow side of one sweep; cheap to rebuild in any Ray process from (uri, experiment_id, parent_run_id)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.client = MlflowClient(tracking_uri)

    @classmethod
    def start(cls, tracking_uri: str, experiment_name: str, sweep_name: str, params: dict[str, Any]) -> SweepTracker:
        """Create the experiment (if new) and the sweep's parent run."""
        client = MlflowClient(tracking_uri)
        try:
            experiment = client.get_experiment_by_name(experiment_name)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else client.create_experiment(experiment_name))
            run = client.create_run(experiment_id, run_name=sweep_name, tags={ROLE: "sweep", SWEEP: sweep_name})
        except Exception as err:  # connection refused, bad URI, permissions: MLflow raises many kinds
            raise TrackingError(f"cannot use the MLflow tracking store {tracking_uri!r}: {err}") from err
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return cls(tracking_uri, experiment_id, run.info.run_id)

    def describe(self) -> dict[str, str]:
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent_run_id}

    def reopen_parent(self) -> None:
        """Mark the parent running again (a resumed sweep)."""
        self.client.update_run(self.parent_run_id, status="RUNNING")

    # --- trials -------------------------------------------------------------------------------

    def trial_runs(self) -> list:
        """Every child run of the sweep."""
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.{PARENT} = '{self.parent_run_id}'",
                                       max_results=50_000)

    def open_trial(self, trial_id: str, params: dict[str, Any]) -> tuple[str, str]:
        """The child run of ``trial_id``: (run id, nsde.status); created with its params if new."""
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{PARENT} = '{self.parent_run_id}' and tags.`{TRIAL_ID}` = '{trial_id}'")
        if existing:
            run = existing[0]
            if run.data.tags.get(STATUS) not in ("finished", "diverged"):
                self.client.update_run(run.info.run_id, status="RUNNING")
                self.client.set_tag(run.info.run_id, STATUS, "running")
            return run.info.run_id, run.data.tags.get(STATUS, "running")
        run = self.client.create_run(self.experiment_id, run_name=f"trial_{trial_id}", tags={
            PARENT: self.parent_run_id, ROLE: "trial", TRIAL_ID: trial_id, STATUS: "running", PARETO_TAG: "false"})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id, "running"

    def log_epoch(self, run_id: str, metrics: dict[str, float], epoch: int) -> None:
        self.client.log_batch(run_id, metrics=_metrics(metrics, step=epoch))

    def add_train_node(self, run_id: str, node_id: str) -> None:
        """Add the Ray node that ran rank 0 to the run's ``nsde.train_nodes`` tag (comma-separated)."""
        nodes = self.client.get_run(run_id).data.tags.get(TRAIN_NODES, "")
        if node_id and node_id not in nodes.split(","):
            self.client.set_tag(run_id, TRAIN_NODES, ",".join(filter(None, [nodes, node_id])))

    def finish_trial(self, run_id: str, status: str, metrics: dict[str, float], artifact_dir: str | None = None,
                     error: str | None = None) -> None:
        """Final metrics, artifacts and status (finished, diverged or failed) of a trial's run."""
        finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.client.log_batch(run_id, metrics=_metrics(finite, step=int(metrics.get("epoch", 0))))
        if artifact_dir is not None:
            self.client.log_artifacts(run_id, artifact_dir)
        tags = [RunTag(STATUS, status)] + ([RunTag("nsde.error", error[:5000])] if error else [])
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status="FAILED" if status == "failed" else "FINISHED")

    def finished_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    # --- the Pareto front -----------------------------------------------------------------------

    def front_rows(self) -> list[dict[str, Any]]:
        """One row per finished trial: run id, trial id, params of note, objectives, on_front."""
        rows = []
        for run in self.trial_runs():
            if run.data.tags.get(STATUS) != "finished":
                continue
            metrics = run.data.metrics
            if not all(name in metrics for name, _ in pareto.OBJECTIVES):
                continue
            row = {"run_id": run.info.run_id, "trial_id": run.data.tags.get(TRIAL_ID, "")}
            row.update({name: run.data.params.get(name, "") for name in FRONT_PARAMS})
            if row["noise_mode"] != "attribution":  # shaping params are unused defaults there
                row.update({name: "" for name in FRONT_PARAMS if name.startswith("shaping_")})
            row.update({name: metrics[name] for name, _ in pareto.OBJECTIVES})
            rows.append(row)
        if rows:
            for row, on_front in zip(rows, pareto.non_dominated(pareto.as_minimisation(rows))):
                row["pareto_front"] = bool(on_front)
        rows.sort(key=lambda row: (not row["pareto_front"], -row["val_accuracy"]))
        return rows

    def update_front(self) -> list[dict[str, Any]]:
        """Recompute the front over finished trials; retag every trial; log front files and hypervolume."""
        from nsde_ray import plots

        rows = self.front_rows()
        front_ids = {row["run_id"] for row in rows if row["pareto_front"]}
        for run in self.trial_runs():
            on_front = "true" if run.info.run_id in front_ids else "false"
            if run.data.tags.get(PARETO_TAG) != on_front:
                self.client.set_tag(run.info.run_id, PARETO_TAG, on_front)
        if not rows:
            return rows
        volume = pareto.hypervolume(pareto.as_minimisation([r for r in rows if r["pareto_front"]]),
                                    pareto.sweep_reference())
        self.client.log_metric(self.parent_run_id, "hypervolume", volume, step=len(rows))
        self.client.log_metric(self.parent_run_id, "finished_trials", len(rows), step=len(rows))
        self.client.log_metric(self.parent_run_id, "front_size", len(front_ids), step=len(rows))
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, FRONT_CSV), "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            plots.pareto_html(os.path.join(folder, FRONT_HTML), rows)
            plots.pareto_png(os.path.join(folder, FRONT_PNG), rows)
            self.client.log_artifacts(self.parent_run_id, folder)
        return rows

    def finish_sweep(self) -> None:
        self.client.set_terminated(self.parent_run_id, status="FINISHED")


def front_table(rows: list[dict[str, Any]]) -> str:
    """The front (and the trials off it) as a fixed-width text table."""
    columns = ("pareto_front", "val_accuracy", "sensitivity", "sic", "noise_mode", "noise_sigma", "lr", "trial_id")
    lines = io.StringIO()
    cells = [[format_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)) + "\n")
    for r in cells:
        lines.write("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "\n")
    return lines.getvalue()


def format_cell(value: Any) -> str:
    """A table cell: ``*`` for True, 4 significant digits for numbers and numeric strings (MLflow params)."""
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    try:
        return f"{float(value):.4g}" if value not in ("", None) and not str(value).isalpha() else str(value)
    except ValueError:
        return str(value)

