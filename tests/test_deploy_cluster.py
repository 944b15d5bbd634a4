"""The cluster path of README's "Running on a cluster", for real on one machine: a PostgreSQL-backed ``mlflow
server``, a Ray head and a worker started with ``ray start`` (token authentication on), and the smoke sweep run
with the README's own command line against them.

PostgreSQL refuses to run as root, and tests run as root here and in CI: its server runs as the ``postgres``
user (``runuser``) in a private directory under /tmp. Every server listens on 127.0.0.1 (Ray advertises the
machine's own address for 127.0.0.1, as ``ray start`` always does) and everything started here is stopped by
process group, never by name: other Ray clusters may run on the same machine.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from contextlib import suppress
from pathlib import Path

import mlflow
import psutil
import psycopg2
import pytest

from helpers import finish_sweep, free_port, start_in_group, start_mlflow_server, start_sweep, stop_group, \
    readme_commands, trial_runs, wait_for_mlflow_server, wait_until

pytestmark = pytest.mark.slow
README_SECTION = "## Running on a cluster"


def _postgres_bindir() -> Path | None:
    """Where initdb/pg_ctl live: on PATH, or Debian's /usr/lib/postgresql/<newest>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else None


def _unavailable(message: str) -> None:
    """Skip on a developer's machine; fail in CI, which installs PostgreSQL (.ci/run)."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(message)


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 with a database ``mlflow``; yields its postgresql:// URI."""
    bindir = _postgres_bindir()
    if bindir is None:
        _unavailable("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    run_as = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres user to run the PostgreSQL server as")
        run_as = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="nsde-pg-"))  # not under pytest's root-only tmp dir: postgres must reach it
    password, port = secrets.token_urlsafe(18), free_port()
    (home / "pw").write_text(password)
    if run_as:
        shutil.chown(home, "postgres")
        shutil.chown(home / "pw", "postgres")
    data = home / "data"

    def pg(command: list[str], user: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(user + [str(bindir / command[0]), *command[1:]], capture_output=True, text=True,
                              env=dict(os.environ, PGPASSWORD=password))

    try:
        for command, user in (
                (["initdb", "-D", str(data), "-U", "mlflow", f"--pwfile={home / 'pw'}", "--auth=scram-sha-256",
                  "--encoding=UTF8", "--locale=C"], run_as),
                (["pg_ctl", "-D", str(data), "-l", str(home / "server.log"), "-w", "-t", "60",
                  "-o", f"-h 127.0.0.1 -p {port} -k {home}", "start"], run_as),
                (["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"], [])):
            done = pg(command, user)
            assert done.returncode == 0, (command, done.stdout + done.stderr)
        yield f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        pg(["pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"], run_as)
        shutil.rmtree(home, ignore_errors=True)


def _kill_leftovers(marker: str) -> None:
    """Kill any process still carrying our token path in its environment: only what this test started has it."""
    for process in psutil.process_iter():
        with suppress(psutil.Error):
            if process.environ().get("RAY_AUTH_TOKEN_PATH") == marker:
                process.kill()


@pytest.fixture
def cluster(tmp_path, postgres):
    """An ``mlflow server`` on the PostgreSQL backend store, and a Ray head and one worker node started with ``ray
    start`` (one CPU each, token authentication on), all started side by side; yields (Ray address, the
    environment that a driver needs to join: RAY_AUTH_MODE and the token's path, tracking URI)."""
    temp = Path(tempfile.mkdtemp(prefix="nsde-ray-"))  # short: Ray's socket paths must stay under 108 bytes
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    address = f"127.0.0.1:{free_port()}"
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the psycopg2 driver is the one installed (dev extra)
    backend = postgres.replace("postgresql://", "postgresql+psycopg2://", 1)
    server, uri = start_mlflow_server(backend, tmp_path / "artifacts", tmp_path / "mlflow.log")
    nodes = []
    try:
        for name, flags in (("head", ["--head", "--port", address.split(":")[1], "--include-dashboard", "false"]),
                            ("worker", ["--address", address])):
            log = tmp_path / f"ray-{name}.log"
            nodes.append(start_in_group(
                [str(Path(sys.executable).with_name("ray")), "start", "--block", "--node-ip-address", "127.0.0.1",
                 "--num-cpus", "1", "--temp-dir", str(temp / name), "--disable-usage-stats",
                 "--dashboard-agent-listen-port", str(free_port()), *flags], log, dict(os.environ, **auth)))
            wait_until(lambda: "Ray runtime started" in log.read_text(), nodes[-1], log, 120,
                       f"the Ray {name} started")
        wait_for_mlflow_server(server, uri, tmp_path / "mlflow.log")
        yield address, auth, uri
    finally:
        for process in [*reversed(nodes), server]:
            stop_group(process, timeout=5)
        _kill_leftovers(str(token))
        shutil.rmtree(temp, ignore_errors=True)


def test_readme_smoke_sweep_on_a_ray_start_cluster_logs_every_trial_to_postgres(tmp_path, postgres, cluster):
    address, auth, uri = cluster
    command = ["python", "-m", "sweeps.accuracy_vs_robustness", "--smoke-test"]
    argv = next((c for c in readme_commands(README_SECTION) if c[:4] == command), None)
    assert argv, f"README's {README_SECTION!r} documents no {' '.join(command)}"
    flags = argv[3:]
    ours = {"--address": address, "--storage": str(tmp_path / "sweeps"), "--tracking-uri": uri}
    assert {f for f in flags if f.startswith("--")} == {"--smoke-test", "--name", *ours}
    flags = [ours.get(previous, value) for previous, value in zip([None] + flags, flags)]
    name = flags[flags.index("--name") + 1]
    output = finish_sweep(start_sweep(flags, tmp_path, "sweep.log", env=auth), tmp_path, "sweep.log", 600)
    assert "3 trials, 3 evaluated, 0 failed" in output

    client = mlflow.MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                                filter_string="tags.`nsde.role` = 'sweep'")
    trials = trial_runs(uri, name)
    assert len(parent) == 1 and len(trials) == 3
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.data.tags["nsde.status"] == "finished" and run.info.status == "FINISHED"
        assert {"val_accuracy", "sensitivity", "sic"} <= set(run.data.metrics)
    # the trials trained on both nodes: the worker node really took part
    assert len({node for run in trials for node in run.data.tags["nsde.train_nodes"].split(",")}) == 2

    with psycopg2.connect(postgres) as db, db.cursor() as cursor:  # the runs are rows of PostgreSQL's MLflow schema
        cursor.execute("SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
                       "JOIN tags t ON t.run_uuid = r.run_uuid "
                       "WHERE e.name = %s AND t.key = 'nsde.role' AND t.value = 'trial'", (name,))
        assert {row[0] for row in cursor.fetchall()} == {run.info.run_id for run in trials}
