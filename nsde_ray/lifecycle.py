"""A run's life: its saved state next to Tune's, its MLflow parent run, starting or resuming it, and Ray.

Both commands (``python -m sweeps.accuracy_vs_robustness``, a sweep, and ``python -m
sweeps.paper_tables``, a grid) keep their settings and MLflow ids in :data:`SWEEP_FILE` inside the
run's directory, ``<storage>/<name>``, beside Tune's experiment state; their trials' Ray Train runs
(checkpoints) live in its :data:`TRAIN_DIR`. :func:`open_run` turns parsed flags into a run that is
ready for Ray, new or resumed, and checks everything that can fail before Ray starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from nsde_ray import overrides
from nsde_ray.config import SPACE, ConfigError, TrialConfig, check_name
from nsde_ray.data import DataError
from nsde_ray.flags import fail, parse_args
from nsde_ray.logs import ray_log_level
from nsde_ray.mlflow_uri import (
    TrackingError,
    check_reachable,
    check_tracking_uri,
    is_local_store,
    mask_uri,
    redact,
    resolve_resume_uri,
    resolve_tracking_uri,
)
from nsde_ray.storage import folders_holding, read_text, write_atomically
from nsde_ray.tracking import SweepTracker
from nsde_ray.weights import WeightsError

SWEEP_FILE = "nsde_sweep.json"
TRAIN_DIR = "train"

log = logging.getLogger(__name__)


class SweepError(RuntimeError):
    """A sweep that cannot start or resume as asked; the message says what to do."""


class RunSettings(Protocol):
    """What the helpers below need of a run's settings: :class:`SweepConfig`, or the paper-tables grid's."""

    name: str
    storage: str
    base: TrialConfig

    def to_dict(self) -> dict[str, Any]: ...


def experiment_path(cfg: RunSettings) -> str:
    return f"{cfg.storage.rstrip('/')}/{cfg.name}"


def train_storage(cfg: RunSettings) -> str:
    """Where the trials' Ray Train runs (checkpoints) live: inside the sweep's directory."""
    return f"{experiment_path(cfg)}/{TRAIN_DIR}"


def save_state(cfg: RunSettings, tracker_ids: dict[str, str], kind: str = "sweep") -> None:
    """The run's settings (under ``kind``, the command that made it) and MLflow ids, next to Tune's state.

    Tracking URIs are stored masked (:func:`nsde_ray.mlflow_uri.mask_uri`): no password reaches the
    file. The write is atomic where the storage allows (:func:`nsde_ray.storage.write_atomically`).
    """
    settings, tracker_ids = cfg.to_dict(), dict(tracker_ids)
    for values in (settings, tracker_ids):
        if values.get("tracking_uri"):
            values["tracking_uri"] = mask_uri(values["tracking_uri"])
    write_atomically(experiment_path(cfg), SWEEP_FILE, json.dumps({kind: settings, "tracker": tracker_ids}, indent=2))


def load_state(storage: str, name: str, kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings as saved, MLflow ids) that :func:`save_state` wrote for ``name`` with ``kind``.

    SweepError if ``storage`` holds no run ``name``, or one that another command (kind) made.
    """
    text = read_text(f"{storage.rstrip('/')}/{name}", SWEEP_FILE)
    if text is None:
        raise SweepError(
            f"no sweep named {name!r} in {storage} to resume; check --name and --storage"
            f" (sweeps there: {', '.join(list_sweeps(storage)) or 'none'})"
        )
    try:
        state = json.loads(text)
    except ValueError as err:
        raise SweepError(f"the state of {name!r} in {storage} ({SWEEP_FILE}) is unreadable: {err}") from err
    if kind not in state:
        other = next((key for key in state if key != "tracker"), "unknown")
        raise SweepError(
            f"{name!r} in {storage} is a {other!r} run, not a {kind!r} one: resume it with the command "
            "that started it, or choose another --name"
        )
    return state[kind], state["tracker"]


def list_sweeps(storage: str) -> list[str]:
    """The names of the runs saved in ``storage``; none if it does not exist yet.

    SweepError if the storage cannot be listed (permissions, a file where a directory should be,
    unreachable object storage): that is never read as "no sweeps".
    """
    try:
        return folders_holding(storage, SWEEP_FILE)
    except (OSError, ValueError) as err:  # pyarrow raises OSError subclasses; ArrowInvalid for a bad URI
        raise SweepError(
            f"cannot list the sweeps in --storage {storage}: {err}; check the path (or bucket), "
            "that it is a directory, and its permissions"
        ) from err


def sweep_exists(storage: str, name: str) -> bool:
    return name in list_sweeps(storage)


def resolve_storage(storage: str) -> str:
    """An absolute local path, or the URI unchanged."""
    return storage if "://" in storage else os.path.abspath(os.path.expanduser(storage))


def usage_errors() -> tuple[type[Exception], ...]:
    """What :func:`open_run` raises for flags that cannot work (each message says what to do)."""
    return ConfigError, DataError, SweepError, TrackingError, WeightsError


def open_run(
    args: argparse.Namespace,
    *,
    command: str,
    kind: str,
    from_args: Callable,
    from_dict: Callable,
    parent_params: Callable | None = None,
    resume_fields: dict[str, str] | None = None,
    sections: dict[str, type] | None = None,
):
    """The run the flags name, ready for Ray: (settings, :class:`SweepTracker`).

    A new run's settings come from ``from_args(args, name, storage)`` (a name already in the
    storage fails); it gets its MLflow parent run (params: ``parent_params(settings)``, default
    the base trial's) and its saved state (:func:`save_state` under ``kind``). ``--resume``
    rebuilds the saved settings with ``from_dict`` and reopens the parent run; flags given with it
    that differ from the stored settings (``resume_fields``: flag dest -> dotted path in the
    settings; ``sections``: those ``--set`` may name) are named in a warning and not applied
    (:func:`resume_differences`). The returned settings hold the tracking URI masked
    (:func:`nsde_ray.mlflow_uri.mask_uri`); only the tracker connects with the real one. Raises
    :func:`usage_errors`; nothing here starts Ray.
    """
    storage = resolve_storage(args.storage)
    name = args.name or time.strftime(f"{command}_%Y%m%d_%H%M%S")
    check_name(name)  # before anything reads or writes under storage/name
    if args.resume:
        if not args.name:
            raise SweepError("--resume needs the --name of the sweep to continue")
        settings, tracker_ids = load_state(storage, name, kind)
        cfg = from_dict(settings)
        differences = resume_differences(args, settings, resume_fields or {}, sections)
        if differences:
            log.warning(
                f"--resume continues {name!r} with its stored settings; these flags differ from them and "
                "are not applied: " + "; ".join(differences)
            )
        tracking_uri = resolve_resume_uri(args.tracking_uri, cfg.tracking_uri)
    else:
        cfg = from_args(args, name, storage)
        if sweep_exists(storage, name):
            raise SweepError(
                f"a sweep named {name!r} already exists in {storage}: pass --resume to "
                "continue it, or choose another --name"
            )
        tracker_ids = None
        tracking_uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(tracking_uri)
    check_reachable(tracking_uri)
    if args.address and is_local_store(tracking_uri):
        log.warning(
            f"MLflow store {mask_uri(tracking_uri)} is local to this machine; on a multi-node cluster pass "
            "--tracking-uri http://<mlflow server>:5000"
        )
    cfg = replace(cfg, tracking_uri=mask_uri(tracking_uri))
    if tracker_ids is not None:
        tracker = SweepTracker(**dict(tracker_ids, tracking_uri=tracking_uri))
        try:
            tracker.reopen_parent()
        except Exception as err:  # MLflow raises many kinds: a wrong store, a deleted run
            raise TrackingError(
                f"cannot reopen the parent run {tracker_ids.get('parent_run_id')} of {name!r} in the "
                f"MLflow store {mask_uri(tracking_uri)!r}: {redact(str(err), tracking_uri)}; "
                "check --tracking-uri"
            ) from err
        return cfg, tracker
    params = parent_params(cfg) if parent_params is not None else cfg.base.to_params()
    tracker = SweepTracker.start(tracking_uri, cfg.experiment_name, name, params)
    save_state(cfg, tracker.describe(), kind)
    return cfg, tracker


def open_run_from_argv(
    parser: argparse.ArgumentParser, argv: list[str] | None, *, resuming: Callable[[Any], str], **run: Any
) -> tuple[argparse.Namespace, Any, SweepTracker]:
    """Both commands' start: (parsed flags, settings, tracker). The flags are parsed
    (:func:`nsde_ray.flags.parse_args`) and the run opened (:func:`open_run` with ``run``); flags that
    cannot work end the process with status 2 and the reason, as argparse does for a bad flag. A
    resumed run is logged as ``resuming <resuming(settings)>`` with what becomes of its errored trials.
    Ray is not started."""
    args = parse_args(parser, argv)
    try:
        cfg, tracker = open_run(args, **run)
    except usage_errors() as err:
        fail(parser, str(err))
    if args.resume:
        log.info(
            f"resuming {resuming(cfg)}; errored trials "
            + ("stay as they are" if args.no_retry_errored else "run again from their latest checkpoints")
        )
    return args, cfg, tracker


# Flags that say where and how to run, applied on --resume too: never compared with the stored settings.
RUN_FLAGS = frozenset({"name", "storage", "resume", "tracking_uri", "address", "no_retry_errored", "out_dir"})


def resume_differences(
    args: argparse.Namespace, settings: dict[str, Any], fields: dict[str, str], sections: dict[str, type] | None = None
) -> list[str]:
    """The flags given with ``--resume`` whose values differ from the stored ``settings``, each as
    ``--flag (stored X, given Y)``; ``fields``: flag dest -> dotted path in ``settings`` (``base.train.epochs``);
    ``--set``, ``--recipe`` and ``--config`` are compared field by field (``sections``: those they may name,
    ``space`` stored beside ``base``); other flags, which the settings do not record, as ``--flag (not applied)``."""
    differences = []
    for dest in sorted(args.given - RUN_FLAGS):
        flag = "--" + dest.replace("_", "-")
        value = getattr(args, dest)
        if dest in fields:
            given = os.path.abspath(os.path.expanduser(value)) if dest == "init_from" and value else value
            stored = _stored(settings, fields[dest])
            if not _same(stored, given):
                note = ": a resumed run cannot be extended" if dest == "num_samples" else ""
                differences.append(f"{flag} (stored {_show(stored)}, given {_show(given)}{note})")
            continue
        try:
            if dest == "set":
                layers = [(f"--set {text}", [overrides.parse_set(text, sections)]) for text in value]
            elif dest == "recipe":
                layers = [(f"--recipe {value}", overrides.recipe(value))]
            elif dest == "config":
                layers = [(f"--config {value}", overrides.load_config_file(value))]
            else:
                differences.append(f"{flag} (not applied)")
                continue
        except ConfigError:
            differences.append(f"{flag} (not applied)")
            continue
        for label, items in layers:
            changed = []
            for item in items:
                stored = _stored(settings, _settings_path(item.section, item.field))
                if not _same(stored, item.value):
                    changed.append(f"{item.section}.{item.field}: stored {_show(stored)}, given {_show(item.value)}")
            if changed:
                differences.append(f"{label} ({'; '.join(changed)})")
    return differences


def _settings_path(section: str, field: str) -> str:
    return f"{section}.{field}" if section == SPACE else f"base.{section}.{field}"


def _stored(settings: dict[str, Any], path: str) -> Any:
    value: Any = settings
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _same(stored: Any, given: Any) -> bool:
    if isinstance(stored, (list, tuple)) and isinstance(given, (list, tuple)):
        return len(stored) == len(given) and all(_same(a, b) for a, b in zip(stored, given))
    numbers = (int, float)
    if (
        isinstance(stored, numbers)
        and isinstance(given, numbers)
        and not isinstance(stored, bool)
        and not isinstance(given, bool)
    ):
        return math.isclose(float(stored), float(given), rel_tol=1e-9, abs_tol=0.0) or stored == given
    return stored == given


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


def init_ray(address: str | None, level: int = logging.INFO) -> None:
    """Join ``address`` (or start a local Ray), with Ray's own loggers at :func:`nsde_ray.logs.ray_log_level`.

    No credentials travel with the job: a ``runtime_env`` is shown in plain text on Ray's dashboard
    and state API. A local Ray started here inherits this process's environment (MLFLOW_TRACKING_*,
    AWS_* ...); on a cluster the Ray workers get theirs from their nodes (the environment where
    ``ray start`` runs, files, instance roles), see docs/cluster.md. A process that
    started Ray itself (a notebook, a test) keeps its instance.
    """
    import ray

    if ray.is_initialized():
        return
    ray.init(address=address, logging_config=ray.LoggingConfig(log_level=ray_log_level(level)))
