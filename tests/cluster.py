"""The README's one-machine cluster for the end-to-end tests: PostgreSQL, an ``mlflow server`` on it, and a Ray
head and worker started with ``ray start`` (token authentication on).

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
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
from helpers import free_port, start_in_group, start_mlflow_server, stop_group, wait_for_mlflow_server, wait_until


class Unavailable(RuntimeError):
    """What this machine lacks to start the cluster (callers skip, or fail in CI)."""


def _postgres_bindir() -> Path | None:
    """Where initdb/pg_ctl live: on PATH, or Debian's /usr/lib/postgresql/<newest>/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0
    )
    return found[-1].parent if found else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 with a database ``mlflow``; yields its postgresql:// URI."""
    bindir = _postgres_bindir()
    if bindir is None:
        raise Unavailable("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    run_as = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user to run the PostgreSQL server as") from None
        run_as = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="nsde-pg-"))  # not under pytest's root-only tmp dir: postgres must reach it
    password, port = secrets.token_urlsafe(18), free_port()
    (home / "pw").write_text(password)
    if run_as:
        shutil.chown(home, "postgres")
        shutil.chown(home / "pw", "postgres")
    data = home / "data"

    def pg(command: list[str], user: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            user + [str(bindir / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            env=dict(os.environ, PGPASSWORD=password),
        )

    try:
        for command, user in (
            (
                [
                    "initdb",
                    "-D",
                    str(data),
                    "-U",
                    "mlflow",
                    f"--pwfile={home / 'pw'}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                run_as,
            ),
            (
                [
                    "pg_ctl",
                    "-D",
                    str(data),
                    "-l",
                    str(home / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    f"-h 127.0.0.1 -p {port} -k {home}",
                    "start",
                ],
                run_as,
            ),
            (["createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"], []),
        ):
            done = pg(command, user)
            assert done.returncode == 0, (command, done.stdout + done.stderr)
        yield f"postgresql://mlflow:{password}@127.0.0.1:{port}/mlflow"
    finally:
        pg(["pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"], run_as)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def ray_start_cluster(folder: Path, backend_store_uri: str) -> Iterator[tuple[str, dict[str, str], str]]:
    """An ``mlflow server`` on ``backend_store_uri`` (PostgreSQL), and a Ray head and one worker node started with
    ``ray start`` (one CPU each, token authentication on), all started side by side; yields (Ray address, the
    environment that a driver needs to join: RAY_AUTH_MODE and the token's path, tracking URI)."""
    temp = Path(tempfile.mkdtemp(prefix="nsde-ray-"))  # short: Ray's socket paths must stay under 108 bytes
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    address = f"127.0.0.1:{free_port()}"
    # SQLAlchemy 2.1 reads postgresql:// as psycopg 3; the psycopg2 driver is the one installed (dev extra)
    backend = backend_store_uri.replace("postgresql://", "postgresql+psycopg2://", 1)
    server, uri = start_mlflow_server(backend, folder / "artifacts", folder / "mlflow.log")
    nodes = []
    try:
        for name, flags in (
            ("head", ["--head", "--port", address.split(":")[1], "--include-dashboard", "false"]),
            ("worker", ["--address", address]),
        ):
            log = folder / f"ray-{name}.log"
            nodes.append(
                start_in_group(
                    [
                        str(Path(sys.executable).with_name("ray")),
                        "start",
                        "--block",
                        "--node-ip-address",
                        "127.0.0.1",
                        "--num-cpus",
                        "1",
                        "--temp-dir",
                        str(temp / name),
                        "--disable-usage-stats",
                        "--dashboard-agent-listen-port",
                        str(free_port()),
                        *flags,
                    ],
                    log,
                    dict(os.environ, **auth),
                )
            )
            wait_until(
                lambda log=log: "Ray runtime started" in log.read_text(), nodes[-1], log, 120, f"the Ray {name} started"
            )
        wait_for_mlflow_server(server, uri, folder / "mlflow.log")
        yield address, auth, uri
    finally:
        for process in [*reversed(nodes), server]:
            stop_group(process, timeout=5)
        _kill_leftovers(str(token))
        shutil.rmtree(temp, ignore_errors=True)


def _kill_leftovers(marker: str) -> None:
    """Kill any process still carrying our token path in its environment: only what this test started has it."""
    for process in psutil.process_iter():
        with suppress(psutil.Error):
            if process.environ().get("RAY_AUTH_TOKEN_PATH") == marker:
                process.kill()
