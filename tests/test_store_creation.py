"""Two commands started together on a new SQLite store: both get their experiment and sweep run.

MLflow creates a new SQLite store's tables on first use without a guard; without nsde_ray's lock one of two
processes that start together fails ("table alembic_version already exists"), which the command used to report
as an unusable tracking URI.
"""

import subprocess
import sys
import textwrap
import time

from mlflow import MlflowClient

START = textwrap.dedent("""
    import os, sys, time
    from nsde_ray.mlflow_uri import check_tracking_uri
    from nsde_ray.tracking import SweepTracker
    go, uri, name = sys.argv[1:4]
    open(f"{go}.{name}", "w").close()  # imports done
    while not os.path.exists(go):  # wait for the other process
        time.sleep(0.005)
    check_tracking_uri(uri)  # what a command does first with its store
    SweepTracker.start(uri, name, name, {})
""")


NAMES = ("grid_a", "grid_b")


def test_two_commands_starting_together_on_a_new_store_both_start(tmp_path):
    for attempt in range(2):
        go, uri = tmp_path / f"go{attempt}", f"sqlite:///{tmp_path}/store{attempt}/mlflow.db"
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", START, str(go), uri, name],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in NAMES
        ]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all((tmp_path / f"go{attempt}.{n}").exists() for n in NAMES):
            time.sleep(0.05)
        go.touch()  # both at the start line
        outputs = [p.communicate(timeout=180)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        names = {e.name for e in MlflowClient(uri).search_experiments()}
        assert set(NAMES) <= names
