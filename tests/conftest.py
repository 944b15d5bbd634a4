import os
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray instance (2 CPUs, like this machine and CI) for one test module.

    Module-scoped: the sweep tests start Ray in subprocesses, and a second live local instance on the
    machine would make Ray's address="auto" lookups ambiguous for them.
    """
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_model():
    """(model, splits): a cifar_resnet8 neural SDE (Gaussian, sigma 0.5) trained in-process on digits for 3 epochs."""
    import torch

    from nsde_ray.config import DataConfig, NoiseConfig, TrainConfig
    from nsde_ray.data import build_datasets
    from nsde_ray.models import build_model
    from nsde_ray.train import fit_in_process

    torch.manual_seed(0)
    splits = build_datasets(DataConfig())
    model = build_model("cifar_resnet8", splits.num_classes, splits.in_channels, NoiseConfig("gaussian", 0.5))
    return fit_in_process(model, splits.train, TrainConfig(lr=0.05, epochs=3, batch_size=32)), splits


@dataclass(frozen=True)
class SmokeSweep:
    """A finished smoke sweep: its MLflow tracking URI, sweep name, printed output and PostgreSQL URI (or None);
    the backend store and artifact folder its ``mlflow server`` serves."""

    uri: str
    name: str
    output: str
    postgres: str | None
    store: str
    artifacts: Path


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory) -> Iterator[SmokeSweep]:
    """The cluster guide's smoke sweep (docs/cluster.md) on its one-machine cluster: a PostgreSQL-backed
    ``mlflow server`` and a Ray head and worker started with ``ray start``, run once and read by several tests.

    Without PostgreSQL (a developer's machine) it runs on a local Ray with a SQLite-backed ``mlflow server``
    instead; in CI, which installs PostgreSQL (.ci/run), that is an error. Servers stay up for the session.
    """
    from cluster import Unavailable, postgres_server, ray_start_cluster
    from helpers import CLUSTER_DOC, CLUSTER_SECTION, finish_sweep, mlflow_server, readme_commands, start_sweep

    folder = tmp_path_factory.mktemp("smoke_sweep")
    command = ["python", "-m", "sweeps.accuracy_vs_robustness", "--smoke-test"]
    argv = next((c for c in readme_commands(CLUSTER_SECTION, CLUSTER_DOC) if c[:4] == command), None)
    assert argv, f"the cluster guide's {CLUSTER_SECTION!r} documents no {' '.join(command)}"
    flags = argv[3:]
    name = flags[flags.index("--name") + 1]
    sqlite = f"sqlite:///{folder}/server.db"
    with ExitStack() as stack:
        try:
            postgres = stack.enter_context(postgres_server())
            address, env, uri = stack.enter_context(ray_start_cluster(folder, postgres))
        except Unavailable as reason:
            if os.environ.get("CI"):
                raise
            warnings.warn(
                f"smoke sweep on a local Ray and SQLite instead of the README's cluster: {reason}", stacklevel=2
            )
            postgres, address, env = None, None, None
            uri = stack.enter_context(mlflow_server(sqlite, folder / "artifacts", folder / "server.log"))
        # the store as its server reads it (SQLAlchemy 2.1 reads postgresql:// as psycopg 3; psycopg2 is installed)
        store = postgres.replace("postgresql://", "postgresql+psycopg2://", 1) if postgres else sqlite
        ours = {"--address": address, "--storage": str(folder / "sweeps"), "--tracking-uri": uri}
        assert {f for f in flags if f.startswith("--")} == {"--smoke-test", "--name", *ours}
        argv = [ours.get(previous, value) for previous, value in zip([None] + flags, flags)]
        if address is None:  # a local Ray: no --address
            del argv[argv.index("--address") : argv.index("--address") + 2]
        output = finish_sweep(start_sweep(argv, folder, "sweep.log", env=env), folder, "sweep.log", 900)
        yield SmokeSweep(uri, name, output, postgres, store, folder / "artifacts")
