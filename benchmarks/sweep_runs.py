"""Running ``python -m sweeps.accuracy_vs_robustness`` from a benchmark and reading its seed runs back from MLflow."""

import os
import statistics
import subprocess
import sys
import time

import mlflow


def run_sweep(folder: str, name: str, flags: list[str]) -> float:
    """The sweep named ``name`` with ``flags``, its Ray storage, MLflow store (SQLite) and log in ``folder``; its wall
    seconds."""
    command = [
        sys.executable,
        "-m",
        "sweeps.accuracy_vs_robustness",
        "--quiet",
        "--name",
        name,
        "--storage",
        os.path.join(folder, "ray"),
        "--tracking-uri",
        f"sqlite:///{folder}/mlflow.db",
        *flags,
    ]
    started = time.perf_counter()
    with open(os.path.join(folder, f"{name}.log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - started


def seed_runs(folder: str, name: str) -> list[mlflow.entities.Run]:
    """Every seed run of sweep ``name`` (tag ``nsde.role = seed``) in ``folder``'s MLflow store."""
    client = mlflow.MlflowClient(f"sqlite:///{folder}/mlflow.db")
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], "tags.`nsde.role` = 'seed'")


def spread(values: list[float], digits: int = 1) -> str:
    """``mean ± std`` of ``values`` (the mean alone for one value)."""
    if len(values) > 1:
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
    return f"{values[0]:.{digits}f}"
