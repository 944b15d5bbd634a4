"""Helpers for the end-to-end tests that start real servers: free ports, readiness waits, process-group teardown."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parent.parent
SWEEP_COMMAND = [sys.executable, "-m", "sweeps.accuracy_vs_robustness"]


def require(condition: bool, reason: str) -> None:
    """Skip the test (or, called at import, its module) unless ``condition``: on a developer's machine that may lack
    a server or a browser. Under CI (``CI`` set, as .ci/run does), which installs all of them, fail instead: a skip
    there would hide a test that never ran."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run this test, not skip it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str, install: str):
    """The module ``name``, or :func:`require`'s skip (a failure under CI) where it cannot be imported; ``install``
    says how to get it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        require(False, f"cannot import {name} ({err}): {install}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def wait_until(
    ready: Callable[[], bool], process: subprocess.Popen, log: Path, timeout: float, what: str, poll: float = 0.5
) -> None:
    """Poll ``ready`` until it holds; fail with ``log``'s tail if ``process`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        tail = log.read_text()[-3000:] if log.exists() else ""
        assert process.poll() is None, f"{process.args[:3]} exited (code {process.returncode}) before {what}:\n{tail}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}:\n{tail}"
        time.sleep(poll)


def start_in_group(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in a process group of its own (see :func:`stop_group`), output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM the process group that :func:`start_in_group` made, then SIGKILL what is left of it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_mlflow_server(backend_store_uri: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start a real ``mlflow server`` on 127.0.0.1 with ``backend_store_uri`` and a local artifact store, without
    waiting for it (see :func:`wait_for_mlflow_server`); returns (process, URI). Its job-execution workers (for
    GenAI jobs, unused here) stay off: they would take CPU that the tests need."""
    port = free_port()
    server = start_in_group(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            str(artifacts),
            "--workers",
            "1",
        ],
        log,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    return server, f"http://127.0.0.1:{port}"


def wait_for_mlflow_server(server: subprocess.Popen, uri: str, log: Path, timeout: float = 180) -> None:
    wait_until(lambda: http_ok(f"{uri}/health"), server, log, timeout, "the mlflow server answered")


@contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """A real ``mlflow server`` (see :func:`start_mlflow_server`), ready; yields its URI."""
    server, uri = start_mlflow_server(backend_store_uri, artifacts, log)
    try:
        wait_for_mlflow_server(server, uri, log)
        yield uri
    finally:
        stop_group(server)


CLUSTER_SECTION, CLUSTER_DOC = "## Running on a cluster", "docs/cluster.md"  # the cluster guide's commands


def readme_section(title: str, doc: str = "README.md") -> str:
    """The section headed ``title`` (a ``## `` line) of ``doc`` (README.md or a file under docs/), up to the
    next such heading."""
    text = (REPO / doc).read_text()
    start = text.index(f"\n{title}\n") + 1
    end = text.find("\n## ", start)
    return text[start:] if end < 0 else text[start:end]


def readme_commands(title: str, doc: str = "README.md") -> list[list[str]]:
    """Every command in the bash blocks of ``doc``'s section ``title``, as argv (continuation lines joined,
    comments dropped, ``&&``/``;``/``|``/``&`` lists split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme_section(title, doc), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                end = next((i for i, t in enumerate(tokens) if t in ("&&", "&", ";", "|")), len(tokens))
                commands.append(tokens[:end])
                tokens = tokens[end + 1 :]
    return [command for command in commands if command]


def start_sweep(flags: list[str], tmp_path: Path, log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m sweeps.accuracy_vs_robustness FLAGS`` in ``tmp_path`` (extra ``env`` on top of ours)."""
    with open(tmp_path / log_name, "w") as log:
        return subprocess.Popen(
            SWEEP_COMMAND + flags,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
        )


def finish_sweep(process: subprocess.Popen, tmp_path: Path, log_name: str, timeout: float) -> str:
    """Wait for a sweep from :func:`start_sweep`, assert it succeeded, and return its output."""
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    output = (tmp_path / log_name).read_text()
    assert process.returncode == 0, output[-5000:]
    return output


def runs_with_role(uri: str, experiment: str, role: str) -> list:
    """The runs tagged ``nsde.role = role`` (``trial``, ``seed``, ``sweep``) in the MLflow experiment ``experiment``."""
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], filter_string=f"tags.`nsde.role` = '{role}'")


def trial_runs(uri: str, experiment: str) -> list:
    """The trial (configuration) runs of the sweep whose MLflow experiment is ``experiment``."""
    return runs_with_role(uri, experiment, "trial")


def seed_runs(uri: str, experiment: str) -> list:
    """The seed runs (nested under the trials' runs) of the sweep whose MLflow experiment is ``experiment``."""
    return runs_with_role(uri, experiment, "seed")


def write_images(folder: Path, n: int, colour: int, size: tuple[int, int] = (40, 30)) -> None:
    """``n`` RGB PNGs of ``size`` (height, width) and one flat ``colour`` (0-255) in ``folder`` (created): an
    image-folder class."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((*size, 3), colour, dtype=np.uint8)).save(folder / f"{i}.png")


def assert_usage_error(main: Callable[[list[str]], int], argv: list[str], message: str, capsys) -> None:
    """A command's ``main(argv)`` exits with status 2 and ``message`` within 30 s, before Ray starts."""
    import ray

    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "(see --help)" in err
    assert not ray.is_initialized() and time.perf_counter() - started < 30
