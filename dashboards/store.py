"""What the dashboards read from MLflow: sweeps, their trials and front, trial artifacts and models.

Read-only, through :class:`mlflow.MlflowClient`, with the names of :mod:`nsde_ray.tracking`.
Artifacts are downloaded once into a cache folder, which is pruned (least recently used runs first)
when it grows past ``max_cache_bytes``; models load with ``weights_only=True``, their metadata
checked first (:func:`nsde_ray.explain.load_model`), and at most ``max_models`` stay in memory
(least recently used dropped). The tracking URI is shown masked (:func:`nsde_ray.mlflow_uri.mask_uri`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient

from nsde_ray import mlflow_uri, tracking
from nsde_ray.evaluate import ARTIFACT_GRID, GALLERY_DIR
from nsde_ray.explain import ModelBundle, load_model
from nsde_ray.front import FrontReport
from nsde_ray.names import LEGACY_MODEL_FILE, MODEL_FILE


class DashboardError(RuntimeError):
    """Something the page shows the user instead of a result; the message says what to do."""


@dataclass(frozen=True)
class Sweep:
    """A sweep's MLflow experiment and parent run."""

    name: str
    experiment_id: str
    parent_run_id: str

    @property
    def label(self) -> str:
        return f"{self.name} ({self.parent_run_id[:8]})"


MAX_MODELS = 8  # models kept in memory
MAX_CACHE_BYTES = 2 * 2**30  # the artifact cache folder's size before the least recently used runs go


class SweepStore:
    """The sweeps in one MLflow tracking store; safe to share between the app's request threads."""

    def __init__(
        self,
        tracking_uri: str,
        ui_url: str | None = None,
        cache_dir: str | None = None,
        max_models: int = MAX_MODELS,
        max_cache_bytes: int = MAX_CACHE_BYTES,
    ) -> None:
        self.tracking_uri = mlflow_uri.resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self.ui_url = (
            ui_url
            or (
                mlflow_uri.without_credentials(self.tracking_uri)
                if self.tracking_uri.startswith("http")
                else "http://127.0.0.1:5000"
            )
        ).rstrip("/")
        self.cache_dir = cache_dir or tempfile.mkdtemp(prefix="nsde-dashboards-")
        self.max_models, self.max_cache_bytes = max_models, max_cache_bytes
        self._models: OrderedDict[str, ModelBundle] = OrderedDict()
        self._used: dict[str, int] = {}  # run id -> when its cached artifacts were last used (a counter)
        self._clock = itertools.count()
        self._lock = threading.RLock()

    @property
    def display_uri(self) -> str:
        """The tracking URI as the page shows it: a password masked."""
        return mlflow_uri.mask_uri(self.tracking_uri)

    def check_reachable(self) -> None:
        try:
            mlflow_uri.check_reachable(self.tracking_uri)
        except mlflow_uri.TrackingError as err:
            raise DashboardError(f"cannot read the MLflow store: {err}") from err

    def sweeps(self) -> list[Sweep]:
        """Every sweep (parent run tagged ``nsde.role = sweep``), newest first."""
        self.check_reachable()
        try:
            experiments = self.client.search_experiments()
            runs = (
                self.client.search_runs(
                    [e.experiment_id for e in experiments],
                    filter_string=f"tags.`{tracking.ROLE}` = 'sweep'",
                    order_by=["attributes.start_time DESC"],
                )
                if experiments
                else []
            )
        except Exception as err:  # connection refused, bad URI: MLflow raises many kinds
            raise DashboardError(
                f"cannot read the MLflow store {self.display_uri!r}: {mlflow_uri.redact(str(err), self.tracking_uri)}"
            ) from err
        names = {e.experiment_id: e.name for e in experiments}
        return [
            Sweep(names.get(run.info.experiment_id, run.info.experiment_id), run.info.experiment_id, run.info.run_id)
            for run in runs
        ]

    def sweep(self, label: str) -> Sweep:
        for sweep in self.sweeps():
            if sweep.label == label:
                return sweep
        raise DashboardError(f"no sweep {label!r} in {self.display_uri}; pick one from the list")

    def assessment(self, sweep: Sweep) -> FrontReport:
        """The sweep's front over its finished configurations, and its noise modes compared
        (:meth:`SweepTracker.assess`)."""
        return tracking.SweepTracker(self.tracking_uri, sweep.experiment_id, sweep.parent_run_id).assess()

    def trials(self, sweep: Sweep) -> list[dict[str, Any]]:
        """Finished configurations, objectives as means with ``<name>_se``, assessed
        (:meth:`SweepTracker.front_rows`)."""
        return self.assessment(sweep).rows

    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def run_url(self, sweep: Sweep, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{sweep.experiment_id}/runs/{run_id}"

    def artifact(self, run_id: str, path: str) -> str | None:
        """A local copy of the run's artifact ``path`` (file or folder), or None if the run has none.

        A configuration trained with several seeds keeps its figures and model in its seed runs:
        then the first seed's artifact stands for it. After a download the cache is pruned to
        ``max_cache_bytes`` (:meth:`prune`), this run's files kept.
        """
        with self._lock:
            target = os.path.join(self.cache_dir, run_id)
            local = os.path.join(target, path)
            if os.path.exists(local):
                self._used[run_id] = next(self._clock)
                return local
            parent = os.path.dirname(path)
            if path not in {a.path for a in self.client.list_artifacts(run_id, parent or None)}:
                run = self.client.get_run(run_id)
                if run.data.tags.get(tracking.ROLE) != "trial":
                    return None
                seeds = tracking.SweepTracker(self.tracking_uri, run.info.experiment_id, "").seed_runs(run_id)
                return self.artifact(seeds[0].info.run_id, path) if seeds else None
            os.makedirs(target, exist_ok=True)
            local = self.client.download_artifacts(run_id, path, target)
            self._used[run_id] = next(self._clock)
            self.prune(keep=run_id)
            return local

    def prune(self, keep: str | None = None) -> list[str]:
        """Delete cached runs, least recently used first, until the cache holds at most ``max_cache_bytes``
        (``keep``'s files stay); returns the run ids deleted. The page has its own copies of what it shows."""
        with self._lock:
            sizes = {entry.name: _size(entry.path) for entry in os.scandir(self.cache_dir) if entry.is_dir()}
            total, deleted = sum(sizes.values()), []
            for run_id in sorted(sizes, key=lambda name: self._used.get(name, -1)):
                if total <= self.max_cache_bytes:
                    break
                if run_id == keep:
                    continue
                shutil.rmtree(os.path.join(self.cache_dir, run_id), ignore_errors=True)
                self._used.pop(run_id, None)
                total -= sizes[run_id]
                deleted.append(run_id)
            return deleted

    def grid(self, run_id: str) -> str | None:
        return self.artifact(run_id, ARTIFACT_GRID)

    def gallery(self, run_id: str) -> list[str]:
        """The run's evaluation images (PNG paths), sorted; empty if it logged none."""
        folder = self.artifact(run_id, GALLERY_DIR)
        if folder is None:
            return []
        return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".png"))

    def model(self, run_id: str) -> ModelBundle:
        """The run's exported model (``model/model.pt``, or ``model/checkpoint.pt`` from earlier versions), loaded
        once and kept among the ``max_models`` most recently used; its metadata is checked before use
        (:func:`nsde_ray.explain.load_model`)."""
        with self._lock:
            if run_id in self._models:
                self._models.move_to_end(run_id)
                return self._models[run_id]
            path = self.artifact(run_id, f"{tracking.MODEL_DIR}/{MODEL_FILE}") or self.artifact(
                run_id, f"{tracking.MODEL_DIR}/{LEGACY_MODEL_FILE}"
            )
            if path is None:
                raise DashboardError(
                    f"run {run_id} has no model artifact ({tracking.MODEL_DIR}/{MODEL_FILE}): it "
                    "failed, diverged, or its artifacts were deleted; choose another run"
                )
            try:
                bundle = load_model(path)
            except Exception as err:  # a truncated download, a file from an older version
                raise DashboardError(f"run {run_id}'s model cannot be loaded: {err}") from err
            self._models[run_id] = bundle
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            return bundle


def _size(folder: str) -> int:
    """Bytes of the files under ``folder``."""
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def default_pair(rows: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(plain ResNet, neural SDE) run ids: the most accurate ``none`` trial, and the front's noisy trial with
    the lowest sensitivity (any noisy trial if none is on the front)."""
    plain = [r for r in rows if r.get("noise_mode") == "none"]
    noisy = [r for r in rows if r.get("noise_mode") != "none"]
    front = [r for r in noisy if r["pareto_front"]] or noisy
    left = max(plain, key=lambda r: r["val_accuracy"])["run_id"] if plain else None
    right = min(front, key=lambda r: r["sensitivity"])["run_id"] if front else None
    return left, right
