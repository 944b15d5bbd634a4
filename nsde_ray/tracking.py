"""MLflow records of a sweep: one parent run, one nested child run per trial, the Pareto front.

Names (the MLflow contract, docs/mlflow.md): the parent has tag ``nsde.role = sweep``; each trial (one
configuration) a child run (tag ``mlflow.parentRunId``) with ``nsde.role = trial``,
``nsde.trial_id`` (Ray Tune's trial id, which a resumed trial keeps, so a resume re-opens the run
instead of duplicating it), ``nsde.status`` (running, finished, diverged or failed),
``pareto_front`` (true or false) and ``pareto_confidence`` (the probability of being on the front,
:mod:`nsde_ray.front`). A configuration trained with several seeds has one run per seed nested under
its run (``nsde.role = seed``, ``nsde.seed_index``), and holds the means over seeds with
``<name>_std`` and ``<name>_se`` (:func:`aggregate_seeds`).
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

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from nsde_ray import front
from nsde_ray.names import FRONT_PARAMS, OBJECTIVES

ROLE, TRIAL_ID, STATUS, SWEEP = "nsde.role", "nsde.trial_id", "nsde.status", "nsde.sweep"
PARENT = "mlflow.parentRunId"
TRAIN_NODES = "nsde.train_nodes"
PARETO_TAG, CONFIDENCE_TAG, EXCLUDED_TAG = "pareto_front", "pareto_confidence", "front_excluded"
SEED_INDEX = "nsde.seed_index"
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
# Metrics whose spread across seeds is logged (<name>_std, <name>_se): the objectives and the per-method ones.
REPLICATED = ("val_accuracy", "noise_energy", "sensitivity", "sic", "aic_", "infidelity_", "localisation_auc_",
              "randomisation_similarity_", "randomisation_repeatability_", "ig_")
FRONT_METRICS = ("sic_valid_fraction_ig", "randomisation_passed_ig", "randomisation_similarity_ig", "noise_energy")


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


MASK = "***"


def mask_uri(uri: str | None) -> str | None:
    """``uri`` as it may be shown or stored: a password in it (``user:password@host``) becomes ``user:***@host``.

    Every place that prints a tracking URI, stores it (the sweep state file), logs it or shows it
    (the dashboards) uses this; the real URI is only used to connect. A URI without a password is
    returned unchanged.
    """
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    authority, sep, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}{sep}{path}"


def is_masked(uri: str | None) -> bool:
    """Whether ``uri`` is one that :func:`mask_uri` masked (its password is ``***``)."""
    return bool(uri) and mask_uri(uri) == uri and f":{MASK}@" in uri


def without_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@`` part (MLflow then takes them from MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    authority, sep, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{sep}{path}"


def redact(text: str, uri: str | None) -> str:
    """``text`` (an error message) with ``uri`` masked and its password, wherever it appears, replaced by ``***``."""
    if not uri or mask_uri(uri) == uri:
        return text
    password = uri.split("://", 1)[1].partition("/")[0].rpartition("@")[0].split(":", 1)[1]
    text = text.replace(uri, mask_uri(uri))
    return text.replace(password, MASK) if password else text


def tracking_warning(what: str, err: Exception, uri: str | None = None) -> str:
    """``what`` went wrong with MLflow, and the error, as a warning's text with ``uri``'s password kept out."""
    return f"{what}: {redact(f'{type(err).__name__}: {err}', uri)}"


def resolve_resume_uri(given: str | None, stored: str | None) -> str:
    """The tracking URI of a resumed run: ``given`` (--tracking-uri) if any, else the ``stored`` one.

    A stored URI had its password masked (:func:`mask_uri`); then MLFLOW_TRACKING_URI stands in for
    it, or, with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD set, the stored URI without
    its credentials (MLflow sends those variables as basic auth). Otherwise TrackingError.
    """
    if given:
        return resolve_tracking_uri(given)
    if not is_masked(stored):
        return resolve_tracking_uri(stored)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    if os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return without_credentials(stored)
    raise TrackingError(f"the run's tracking URI was stored with its password masked ({stored}): pass --tracking-uri "
                        "with the password again, or set MLFLOW_TRACKING_URI to it, or set MLFLOW_TRACKING_USERNAME "
                        "and MLFLOW_TRACKING_PASSWORD (MLflow sends them to the server) and resume again")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds if a tracking server does not answer its health check (MLflow's client retries for minutes)."""
    import base64
    import urllib.parse
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(f"{without_credentials(uri).rstrip('/')}/health")
    parts = urllib.parse.urlsplit(uri)
    if parts.password is not None:  # urllib does not read credentials from the URL itself
        token = base64.b64encode(f"{urllib.parse.unquote(parts.username or '')}:"
                                 f"{urllib.parse.unquote(parts.password)}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout)
    except (OSError, ValueError) as err:
        raise TrackingError(f"the MLflow tracking server {mask_uri(uri)!r} does not answer ({redact(str(err), uri)}); "
                            "start it (mlflow server ...) or check --tracking-uri") from err


def check_tracking_uri(uri: str) -> None:
    """A clear :class:`TrackingError` for a URI that MLflow cannot use at all (an unknown scheme such as ``foo://``)."""
    try:
        MlflowClient(uri)
    except Exception as err:  # MLflow raises MlflowException subclasses for unsupported schemes
        raise TrackingError(f"MLflow cannot use the tracking URI {mask_uri(uri)!r}: {redact(str(err), uri)}; "
                            "pass --tracking-uri http(s)://HOST:PORT (an mlflow server), sqlite:///PATH or a "
                            "directory") from err


def is_local_store(uri: str) -> bool:
    """Whether only processes on this machine can reach the store (not so an ``http(s)://`` server)."""
    return uri.startswith(("sqlite:", "file:"))


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def ui_command(uri: str) -> str:
    """The command that browses ``uri`` (bound to 127.0.0.1, MLflow's default)."""
    if uri.startswith(("http://", "https://")):
        return f"open {without_credentials(uri)} in a browser"
    return f"mlflow ui --backend-store-uri {mask_uri(uri)}"


def ui_address(uri: str) -> str:
    """Where MLflow's UI over ``uri`` is: the tracking server itself, or :data:`LOCAL_UI` for a local store."""
    return without_credentials(uri) if uri.startswith(("http://", "https://")) else LOCAL_UI


def _metrics(values: dict[str, float], step: int = 0, timestamp: int | None = None) -> list[Metric]:
    import time

    now = timestamp or int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in dict(values, **grouped_objectives(values)).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]


def grouped_objectives(metrics: dict[str, Any]) -> dict[str, Any]:
    """The objectives among ``metrics``, and their ``<name>_se``, under :data:`OBJECTIVES_SECTION`."""
    names = {name for name, _ in OBJECTIVES}
    return {OBJECTIVES_SECTION + key: value for key, value in metrics.items()
            if key in names or key.removesuffix("_se") in names}


def front_url(experiment_id: str, base: str = "") -> str:
    """The front in MLflow's UI (``base``: the server's address; empty: a link from a page of that UI).

    The experiment's training runs (workflowType) filtered by :data:`FRONT_FILTER`, sorted by val_accuracy: with
    any sort but by creation time the UI lists the matched runs at the top level, while sorted by creation time
    (its default) it nests them under their sweep's run, collapsed.
    """
    import urllib.parse

    query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": FRONT_FILTER,
                                    "orderByKey": "metrics.`val_accuracy`", "orderByAsc": "false"},
                                   quote_via=urllib.parse.quote)
    return f"{base.rstrip('/') + '/' if base else ''}#/experiments/{experiment_id}/runs?{query}"


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
                             else client.create_experiment(experiment_name, tags={EXPERIMENT_KIND: TRAINING_KIND}))
            run = client.create_run(experiment_id, run_name=sweep_name, tags={ROLE: "sweep", SWEEP: sweep_name})
        except Exception as err:  # connection refused, bad URI, permissions: MLflow raises many kinds
            raise TrackingError(f"cannot use the MLflow tracking store {mask_uri(tracking_uri)!r}: "
                                f"{redact(str(err), tracking_uri)}") from err
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
        return self._open(f"tags.{PARENT} = '{self.parent_run_id}' and tags.`{TRIAL_ID}` = '{trial_id}'",
                          f"trial_{trial_id}", {PARENT: self.parent_run_id, ROLE: "trial", TRIAL_ID: trial_id,
                                                PARETO_TAG: "false"}, params)

    def open_seed(self, trial_run_id: str, trial_id: str, index: int, params: dict[str, Any]) -> tuple[str, str]:
        """The run of seed ``index`` of a configuration, nested under its run: (run id, nsde.status)."""
        return self._open(f"tags.{PARENT} = '{trial_run_id}' and tags.`{SEED_INDEX}` = '{index}'",
                          f"trial_{trial_id}_seed{index}", {PARENT: trial_run_id, ROLE: "seed", TRIAL_ID: trial_id,
                                                            SEED_INDEX: str(index)}, params)

    def _open(self, filter_string: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> tuple[str, str]:
        """The run ``filter_string`` finds, marked running unless it ended well, or a new one; (run id, nsde.status)."""
        existing = self.client.search_runs([self.experiment_id], filter_string=filter_string)
        if existing:
            run = existing[0]
            if run.data.tags.get(STATUS) not in ("finished", "diverged"):
                self.client.update_run(run.info.run_id, status="RUNNING")
                self.client.set_tag(run.info.run_id, STATUS, "running")
            return run.info.run_id, run.data.tags.get(STATUS, "running")
        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags, **{STATUS: "running"}))
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
        """The front over the finished configurations among ``runs`` (default: :meth:`trial_runs`)."""
        rows = []
        for run in self.trial_runs() if runs is None else runs:
            if run.data.tags.get(STATUS) != "finished":
                continue
            metrics, params = run.data.metrics, run.data.params
            row = {"run_id": run.info.run_id, "trial_id": run.data.tags.get(TRIAL_ID, "")}
            row.update({name: params.get(name, "") for name in FRONT_PARAMS})
            if row["noise_mode"] != "attribution":  # shaping params are unused defaults there
                row.update({name: "" for name in FRONT_PARAMS if name.startswith("shaping_")})
            for name, _ in OBJECTIVES:  # non-finite values are not logged: NaN here, kept off the front
                row[name], row[f"{name}_se"] = metrics.get(name, math.nan), metrics.get(f"{name}_se", math.nan)
            row.update({name: metrics.get(name, math.nan) for name in FRONT_METRICS})
            row["effective_sigma"] = effective_sigma(params.get("noise_sigma", ""), row["noise_energy"])
            rows.append(row)
        report = front.assess_front(rows)
        rows.sort(key=lambda row: (not row["pareto_front"], -row["pareto_probability"], -row["val_accuracy"]))
        return report

    def seed_runs(self, trial_run_id: str) -> list:
        """The seed runs nested under a configuration's run, by seed index (none with one seed per configuration)."""
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.{PARENT} = '{trial_run_id}' and tags.`{ROLE}` = 'seed'")
        return sorted(runs, key=lambda run: int(run.data.tags.get(SEED_INDEX, 0)))

    def update_front(self) -> front.FrontReport:
        """Recompute the front over finished configurations; retag every trial; log front files, hypervolume, notes."""
        from nsde_ray import plots

        runs = self.trial_runs()
        report = self.assess(runs)
        rows = report.rows
        assessed = {row["run_id"]: row for row in rows}
        for run in runs:
            row = assessed.get(run.info.run_id, {"pareto_front": False, "pareto_probability": 0.0, "excluded": ""})
            tags = {PARETO_TAG: "true" if row["pareto_front"] else "false",
                    CONFIDENCE_TAG: f"{row['pareto_probability']:.2f}"}
            if row["excluded"]:
                tags[EXCLUDED_TAG] = row["excluded"]
            changed = [RunTag(k, v) for k, v in tags.items() if run.data.tags.get(k) != v]
            if changed:
                self.client.log_batch(run.info.run_id, tags=changed)
        if not rows:
            return report
        step = len(rows)
        summary = {"hypervolume": report.hypervolume(), "finished_trials": len(rows),
                   "front_size": sum(row["pareto_front"] for row in rows)}
        for name, (floor, spread, _) in report.floors.items():
            summary.update({f"noise_floor_{name}": floor, f"range_{name}": spread})
        self.client.log_batch(self.parent_run_id, metrics=_metrics(summary, step=step))
        self.client.log_batch(self.parent_run_id, tags=[
            RunTag("front_objectives", ",".join(name for name, _ in report.objectives)),
            RunTag("noise_floor_flagged", ",".join(report.flagged) or "none"),
            RunTag("mlflow.note.content", front_markdown(report, front_url(self.experiment_id)))])
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, FRONT_CSV), "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            plots.pareto_html(os.path.join(folder, FRONT_HTML), rows)
            plots.pareto_png(os.path.join(folder, FRONT_PNG), rows)
            self.client.log_artifacts(self.parent_run_id, folder)
        return report

    def finish_sweep(self) -> None:
        self.client.set_terminated(self.parent_run_id, status="FINISHED")


def aggregate_seeds(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """One configuration's metrics from its seeds' (K dicts): the mean of every metric all seeds report.

    For :data:`REPLICATED` names (prefixes) also ``<name>_std`` (sample std, ddof 1) and
    ``<name>_se`` (std / sqrt(K)). A NaN in any seed makes the mean NaN: a configuration is only
    as good as all of its seeds. Plus ``seeds`` = K.
    """
    names = [name for name in per_seed[0] if all(_is_number(seed.get(name)) for seed in per_seed)]
    aggregated: dict[str, float] = {"seeds": float(len(per_seed))}
    for name in names:
        values = np.array([float(seed[name]) for seed in per_seed])
        aggregated[name] = float(values.mean())
        if name.startswith(REPLICATED) and len(values) > 1:
            std = float(values.std(ddof=1))
            aggregated[f"{name}_std"], aggregated[f"{name}_se"] = std, std / math.sqrt(len(values))
    return aggregated


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


TABLE_COLUMNS = ("pareto_front", "pareto_probability", "val_accuracy", "sensitivity", "sic", "noise_mode",
                 "noise_sigma", "effective_sigma", "lr", "trial_id", "excluded")


def front_table(rows: list[dict[str, Any]]) -> str:
    """The front (and the configurations off it) as a fixed-width text table; objectives as mean ± SE."""
    cells = [[table_cell(row, c) for c in TABLE_COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(TABLE_COLUMNS)]
    lines = io.StringIO()
    lines.write("  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths)).rstrip() + "\n")
    for r in cells:
        lines.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    return lines.getvalue()


def front_markdown(report: front.FrontReport, link: str = "") -> str:
    """The front table and the notes as Markdown: the sweep run's description in MLflow's UI; ``link``
    (:func:`front_url`), if any, under the table."""
    header = "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * len(TABLE_COLUMNS) + "\n"
    body = "".join("| " + " | ".join(table_cell(row, c) or " " for c in TABLE_COLUMNS) + " |\n" for row in report.rows)
    notes = "".join(f"- {note}\n" for note in report.notes)
    return (f"**Pareto front** over {', '.join(name for name, _ in report.objectives)} "
            f"(mean ± SE over seeds; pareto_probability: on the front when the means are redrawn within their SE)"
            f"\n\n{header}{body}" + (f"\n[The front's runs]({link})\n" if link else "")
            + (f"\n{notes}" if notes else ""))


def table_cell(row: dict[str, Any], column: str) -> str:
    """``mean ± SE`` for an objective with a finite SE, blank for NaN, else :func:`format_cell`."""
    value, se = row.get(column, ""), row.get(f"{column}_se", math.nan)
    if column in ("trial_id", "run_id"):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(se, float) and math.isfinite(se):
        return f"{format_cell(value)} ± {se:.2g}"
    return format_cell(value)


def effective_sigma(sigma: Any, noise_energy: float) -> float:
    """sigma * sqrt(noise_energy): the Gaussian sigma with the same noise energy; NaN where either is unknown."""
    try:
        return float(sigma) * math.sqrt(noise_energy)
    except (TypeError, ValueError):
        return math.nan


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

