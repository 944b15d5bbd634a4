import pytest


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray instance (2 CPUs, like this machine and CI) shared by the tests that need it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
