"""docker/ checked without Docker (no engine runs here): every file parses, and the images, the compose stack,
the cluster configs and the cluster guide (docs/cluster.md) agree on versions, ports, environment variables, names
and command lines."""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from helpers import CLUSTER_DOC, CLUSTER_SECTION, REPO, readme_commands, readme_section
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from nsde_ray.cli import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

DOCKER = REPO / "docker"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
SWEEP_SH = "/home/ray/sweep.sh"


def interpolate(text: str) -> str:
    """Compose's variable substitution with no variable set: ``${VAR:-default}`` is its default."""
    return VARIABLE.sub(lambda m: m[3] if m[2] == "-" else f"<{m[1]}>", text).replace("$$", "$")


def load(name: str) -> dict:
    return yaml.safe_load(interpolate((DOCKER / name).read_text()))


def dockerfile_args(name: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", (DOCKER / name).read_text(), re.M))


def dockerfile_pins(name: str) -> dict[str, tuple[str, str]]:
    """Package -> (extras, version) of every ``"package[extras]==${ARG}"`` that the Dockerfile installs."""
    args = dockerfile_args(name)
    found = re.findall(r'"([\w.-]+)(\[[\w,]+\])?==\$\{(\w+)\}"', (DOCKER / name).read_text())
    return {package: (extras, args[arg]) for package, extras, arg in found}


def env_example() -> dict[str, str]:
    lines = (DOCKER / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def cluster_section() -> str:
    return readme_section(CLUSTER_SECTION, CLUSTER_DOC)


def sweep_flags(argv: list[str]) -> list[str]:
    """The flags given to the main command (directly or through sweep.sh) in ``argv``, checked by its parser."""
    start = next(i for i, token in enumerate(argv) if token in ("sweeps.accuracy_vs_robustness", SWEEP_SH))
    flags = argv[start + 1 :]
    build_parser().parse_args(flags)  # exits (fails the test) on a flag the CLI does not have
    return flags


def flag(flags: list[str], name: str) -> str:
    return next(
        v.split("=", 1)[1] if "=" in v else flags[i + 1]
        for i, v in enumerate(flags)
        if v == name or v.startswith(name + "=")
    )


def image_tag() -> str:
    return f"nsde-ray:{PYPROJECT['version']}"


def mlflow_port() -> str:
    """The port the compose stack's MLflow server listens on, the one every config and README command uses."""
    return flag(load("docker-compose.yml")["services"]["mlflow"]["command"].split(), "--port")


def test_every_yaml_file_parses():
    names = sorted(p.name for p in DOCKER.iterdir() if p.suffix in (".yml", ".yaml"))
    assert names == ["cluster-aws-a100.yaml", "docker-compose.gpu.yml", "docker-compose.yml", "kuberay-rayjob.yaml"]
    assert all(isinstance(load(name), dict) for name in names)
    assert yaml.safe_load(load("kuberay-rayjob.yaml")["spec"]["runtimeEnvYAML"])["env_vars"]


def test_images_pin_versions_that_satisfy_pyproject():
    requirements = {Requirement(r).name: Requirement(r) for r in PYPROJECT["dependencies"]}
    requirements.update(
        {Requirement(r).name: Requirement(r) for extra in PYPROJECT["optional-dependencies"].values() for r in extra}
    )
    ray_image, mlflow_image = dockerfile_pins("Dockerfile"), dockerfile_pins("mlflow.Dockerfile")
    assert {"ray", "torch", "torchvision", "mlflow"} <= set(ray_image)
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(mlflow_image)
    for package, (extras, version) in {**mlflow_image, **ray_image}.items():
        if package in requirements:
            assert requirements[package].specifier.contains(version), (package, version, requirements[package])
            assert set(filter(None, extras.strip("[]").split(","))) == requirements[package].extras, package
    assert ray_image["mlflow"][1] == mlflow_image["mlflow"][1]  # the server's MLflow is the clients'

    args = dockerfile_args("Dockerfile")
    base = f"rayproject/ray:{args['RAY_VERSION']}-{args['PYTHON_TAG']}-gpu"
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-gpu" in (DOCKER / "Dockerfile").read_text()
    python = re.fullmatch(r"py3(\d+)", args["PYTHON_TAG"])[1]
    mlflow_python = re.search(r"^FROM python:3\.(\d+)-slim$", (DOCKER / "mlflow.Dockerfile").read_text(), re.M)[1]
    for minor in (python, mlflow_python):
        assert SpecifierSet(PYPROJECT["requires-python"]).contains(f"3.{minor}")
    section = cluster_section()
    assert base in section
    for package in ("torch", "torchvision", "mlflow"):
        assert f"{package} {ray_image[package][1]}" in section
    compose, kuberay = load("docker-compose.yml"), load("kuberay-rayjob.yaml")
    assert compose["services"]["mlflow"]["image"] == f"nsde-ray-mlflow:{mlflow_image['mlflow'][1]}"
    assert kuberay["spec"]["rayClusterSpec"]["rayVersion"] == args["RAY_VERSION"]


def test_images_run_as_non_root_and_copy_files_that_exist():
    for name in ("Dockerfile", "mlflow.Dockerfile"):
        users = re.findall(r"^USER (\S+)", (DOCKER / name).read_text(), re.M)
        assert users and users[-1] not in ("root", "0"), name
    text = (DOCKER / "Dockerfile").read_text()
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    copies = re.findall(r"^COPY (?:--\S+ )*(.+) (\S+)$", text, re.M)
    for sources, _target in copies:
        for source in sources.split():
            assert (REPO / source).exists(), source
            assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is not in the build context"
    assert ("docker/sweep.sh", SWEEP_SH) in copies and os.access(DOCKER / "sweep.sh", os.X_OK)
    assert "ENV RAY_AUTH_MODE=token" in text


def test_compose_builds_from_files_that_exist_and_scales_workers():
    services = load("docker-compose.yml")["services"]
    assert {"postgres", "minio", "mlflow", "ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            dockerfile = DOCKER / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), name
            assert dockerfile.with_name(dockerfile.name + ".dockerignore").is_file(), f"{name}: no .dockerignore"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)  # published on the loopback only
    assert services["ray-head"]["image"] == services["ray-worker"]["image"] == image_tag()
    assert "container_name" not in services["ray-worker"] and "ports" not in services["ray-worker"]  # --scale
    gpu = load("docker-compose.gpu.yml")["services"]
    assert set(gpu) == {"ray-worker"}
    assert gpu["ray-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_compose_ports_env_and_storage_agree():
    raw = (DOCKER / "docker-compose.yml").read_text()
    services = load("docker-compose.yml")["services"]
    head, worker, mlflow = services["ray-head"], services["ray-worker"], services["mlflow"]
    gcs = flag(head["command"].split(), "--port")
    assert flag(worker["command"].split(), "--address") == f"ray-head:{gcs}"
    assert mlflow["ports"] == [f"127.0.0.1:{env_example()['MLFLOW_PORT']}:{mlflow_port()}"]
    assert f"mlflow:{mlflow_port()}" in flag(mlflow["command"].split(), "--allowed-hosts").split(",")
    dashboard = flag(head["command"].split(), "--dashboard-port")
    assert head["ports"] == [f"127.0.0.1:{env_example()['RAY_DASHBOARD_PORT']}:{dashboard}"]
    for node in (head, worker):
        assert node["environment"]["MLFLOW_TRACKING_URI"] == f"http://mlflow:{mlflow_port()}"
        assert node["environment"]["RAY_AUTH_MODE"] == "token"
        assert node["volumes"] == ["sweeps:/shared"]
    assert "${RAY_AUTH_TOKEN:?" in raw  # required, no default token
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    postgres = services["postgres"]["environment"]
    assert backend == (
        f"postgresql+psycopg2://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )
    minio = services["minio"]["environment"]
    assert (mlflow["environment"]["AWS_ACCESS_KEY_ID"], mlflow["environment"]["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    bucket = services["minio-bucket"]["environment"]["MLFLOW_BUCKET"]
    assert flag(mlflow["command"].split(), "--artifacts-destination").startswith(f"s3://{bucket}/")

    # every variable the compose files use is documented in .env.example, and nothing there is unused
    used = {
        m[1]
        for name in ("docker-compose.yml", "docker-compose.gpu.yml")
        for m in VARIABLE.finditer((DOCKER / name).read_text())
    }
    assert used == set(env_example())
    for m in VARIABLE.finditer(raw):  # where .env.example gives a non-secret value, it is the compose default
        if m[2] == "-" and "PASSWORD" not in m[1]:
            assert env_example()[m[1]] in ("", m[3]), m[1]
    for key, value in re.findall(r"^\s+(\w*(?:PASSWORD|SECRET|TOKEN)\w*): (.+)$", raw, re.M):
        assert value.startswith("${"), f"{key} is written into the compose file"


def test_cluster_launcher_config_is_valid_for_ray_and_agrees():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("cluster-aws-a100.yaml")
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == "aws"
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert [t["node_config"]["InstanceType"] for t in workers] == ["p4d.24xlarge"]
    assert config["docker"]["image"].endswith("/" + image_tag())
    env = dict(
        option.split(" ", 1)[1].split("=", 1)
        for option in config["docker"]["run_options"]
        if option.startswith("--env ")
    )
    assert env["RAY_AUTH_MODE"] == "token" and env["SWEEP_STORAGE"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"].endswith(f":{mlflow_port()}")
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    compose = load("docker-compose.yml")["services"]
    head = config["head_start_ray_commands"][-1].split()
    assert flag(head, "--port") == flag(compose["ray-head"]["command"].split(), "--port")
    assert flag(head, "--dashboard-port") == flag(compose["ray-head"]["command"].split(), "--dashboard-port")
    assert f"--address=$RAY_HEAD_IP:{flag(head, '--port')}" in config["worker_start_ray_commands"][-1]


def test_kuberay_rayjob_agrees():
    job = load("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec, cluster = job["spec"], job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"} and spec["backoffLimit"] >= 1
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert env["SWEEP_NAME"] and env["SWEEP_STORAGE"].startswith("s3://")
    assert env["MLFLOW_TRACKING_URI"].endswith(f":{mlflow_port()}")
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    group = cluster["workerGroupSpecs"][0]
    worker = group["template"]["spec"]["containers"][0]
    assert head["image"].endswith("/" + image_tag()) and worker["image"] == head["image"]
    ports = {p["name"]: str(p["containerPort"]) for p in head["ports"]}
    compose = load("docker-compose.yml")["services"]["ray-head"]["command"].split()
    assert (ports["gcs-server"], ports["dashboard"]) == (flag(compose, "--port"), flag(compose, "--dashboard-port"))
    gpus = int(worker["resources"]["limits"]["nvidia.com/gpu"])
    assert gpus == 8 and group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == "p4d.24xlarge"
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == SWEEP_SH
    flags = sweep_flags(argv)
    per_trial = int(flag(flags, "--workers-per-trial"))
    assert per_trial <= gpus and int(flag(flags, "--max-concurrent")) * per_trial <= group["maxReplicas"] * gpus


def test_readme_commands_agree_with_the_files():
    assert "(docs/cluster.md)" in (REPO / "README.md").read_text()  # the README points to the guide
    section, commands = cluster_section(), readme_commands(CLUSTER_SECTION, CLUSTER_DOC)
    for name in re.findall(r"docker/([\w.-]+)", section):
        assert (DOCKER / name).is_file() or name == ".env", name  # .env: the user's copy of .env.example
    for path in DOCKER.iterdir():
        if not path.name.startswith(".") and not path.name.endswith(".dockerignore"):
            assert f"`{path.name}`" in section, f"the cluster guide's table does not list docker/{path.name}"
    services = load("docker-compose.yml")["services"]
    ray_env = services["ray-head"]["environment"]
    sweeps = [c for c in commands if "sweeps.accuracy_vs_robustness" in c]
    for argv in commands:
        if argv[:2] == ["docker", "compose"]:
            if argv[2] in ("exec", "kill", "start", "restart", "stop", "logs"):
                assert argv[3] in services, argv
            if "--scale" in argv:
                assert argv[argv.index("--scale") + 1].split("=")[0] in services
            if "sweeps.accuracy_vs_robustness" in argv:  # a sweep in the compose stack
                flags = sweep_flags(argv)
                assert flag(flags, "--tracking-uri") == ray_env["MLFLOW_TRACKING_URI"]
                assert flag(flags, "--storage").startswith(services["ray-head"]["volumes"][0].split(":")[1] + "/")
        if argv[:2] == ["ray", "exec"]:
            assert (REPO / argv[2]).is_file()
            flags = sweep_flags(shlex.split(argv[-1]))
            assert flag(flags, "--workers-per-trial") == "8"
    local = next(c for c in sweeps if c[0] == "python")  # the one-machine smoke sweep the slow test runs
    flags = sweep_flags(local)
    head = next(c for c in commands if c[:3] == ["ray", "start", "--head"])
    assert (
        flag(flags, "--address")
        == f"127.0.0.1:{flag(head, '--port')}"
        == flag(next(c for c in commands if c[:3] == ["ray", "start", "--address"]), "--address")
    )
    servers = [c for c in commands if c[:2] == ["mlflow", "server"]]
    assert {flag(c, "--port") for c in servers} == {mlflow_port()}
    local_server = next(c for c in servers if flag(c, "--host") == "127.0.0.1")
    assert flag(flags, "--tracking-uri") == f"http://127.0.0.1:{flag(local_server, '--port')}"
    assert f"http://127.0.0.1:{env_example()['MLFLOW_PORT']}" in section
    assert f"http://127.0.0.1:{env_example()['RAY_DASHBOARD_PORT']}" in section
    for variable in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "SWEEP_NAME", "SWEEP_STORAGE"):
        assert variable in section


@pytest.mark.slow  # imports torch and Ray twice a case
@pytest.mark.parametrize("exists", [False, True])
def test_sweep_sh_starts_a_new_sweep_or_resumes_the_stored_one(tmp_path, exists):
    if exists:
        (tmp_path / "demo").mkdir()
        (tmp_path / "demo" / "nsde_sweep.json").write_text("{}")
    env = dict(
        os.environ,
        SWEEP_NAME="demo",
        SWEEP_STORAGE=str(tmp_path),
        PYTHONPATH=str(REPO),
        PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
    )
    done = subprocess.run(
        ["sh", str(DOCKER / "sweep.sh"), "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--resume" in done.stdout and ("resuming it" in done.stderr) == exists
