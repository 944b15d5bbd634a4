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
    """(model, splits): a cifar_resnet8 neural SDE (Gaussian, sigma 0.5) trained in-process on digits, ~97% val."""
    import torch
    from torch.utils.data import DataLoader

    from nsde_ray.config import DataConfig, NoiseConfig, TrainConfig
    from nsde_ray.data import build_datasets
    from nsde_ray.models import build_model
    from nsde_ray.train import build_optimizer

    torch.manual_seed(0)
    splits = build_datasets(DataConfig())
    model = build_model("cifar_resnet8", splits.num_classes, splits.in_channels, NoiseConfig("gaussian", 0.5))
    optimizer = build_optimizer(model, TrainConfig(lr=0.05))
    model.train()
    for _ in range(3):
        for images, labels in DataLoader(splits.train, batch_size=32, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), splits


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """One ``--smoke-test`` sweep logged to a real ``mlflow server`` on 127.0.0.1, shared by the tests that read it.

    Yields (tracking URI, sweep name, the sweep's printed output). The server stays up for the session.
    """
    from helpers import finish_sweep, mlflow_server, start_sweep

    folder = tmp_path_factory.mktemp("smoke_sweep")
    with mlflow_server(f"sqlite:///{folder}/server.db", folder / "artifacts", folder / "server.log") as uri:
        flags = ["--smoke-test", "--storage", str(folder / "ray"), "--name", "smoke", "--tracking-uri", uri]
        yield uri, "smoke", finish_sweep(start_sweep(flags, folder, "smoke.log"), folder, "smoke.log", timeout=900)

