"""Secrets stay secret: no credentials in the Ray job's runtime_env, tracking-URI passwords masked wherever shown or
stored, and --resume asks for them again."""

import json
import os

import pytest
from helpers import assert_usage_error

from nsde_ray import cli
from nsde_ray.config import SweepConfig
from nsde_ray.mlflow_uri import TrackingError, is_masked, mask_uri, redact, ui_address, ui_command, without_credentials

URI = "http://alice:s3cret@127.0.0.1:9"


@pytest.mark.parametrize(
    "uri, masked",
    [
        (URI, "http://alice:***@127.0.0.1:9"),
        ("https://alice:p%40ss:w@mlflow.example.com/prefix?x=1", "https://alice:***@mlflow.example.com/prefix?x=1"),
        ("postgresql+psycopg2://mlflow:pw@db:5432/mlflow", "postgresql+psycopg2://mlflow:***@db:5432/mlflow"),
        ("http://alice@mlflow:5000", "http://alice@mlflow:5000"),  # a user name alone is no secret
        ("http://mlflow:5000/a@b", "http://mlflow:5000/a@b"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        (None, None),
    ],
)
def test_mask_uri_hides_the_password_only(uri, masked):
    assert mask_uri(uri) == masked
    assert mask_uri(masked) == masked and is_masked(masked) == (masked != uri)


def test_messages_and_commands_never_carry_the_password():
    assert (
        redact(f"cannot reach {URI}: auth s3cret refused", URI)
        == "cannot reach http://alice:***@127.0.0.1:9: auth *** refused"
    )
    assert ui_command(URI) == "open http://127.0.0.1:9 in a browser"
    assert ui_address(URI) == "http://127.0.0.1:9" and ui_address("sqlite:////x/mlflow.db") == "http://127.0.0.1:5000"
    assert without_credentials(URI) == "http://127.0.0.1:9"


def test_a_password_in_the_tracking_uri_is_never_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(cli.main, ["--storage", str(tmp_path / "ray"), "--tracking-uri", URI], "does not answer", capsys)
    with pytest.raises(SystemExit):
        cli.main(["--storage", str(tmp_path / "ray"), "--tracking-uri", URI])
    err = capsys.readouterr().err
    assert "'http://alice:***@127.0.0.1:9'" in err and "s3cret" not in err


def _open(tmp_path, *flags):
    args = cli.parse_args(cli.build_parser(), ["--name", "s", "--storage", str(tmp_path), *flags])
    return cli.open_run(
        args, command=cli.COMMAND, kind="sweep", from_args=cli.sweep_config_from_args, from_dict=SweepConfig.from_dict
    )


def test_the_state_file_holds_the_uri_masked_and_resume_asks_for_the_password(tmp_path, monkeypatch):
    from nsde_ray import lifecycle, tracking

    monkeypatch.setattr(lifecycle, "check_reachable", lambda uri: None)  # no server here; MLflow's client is stubbed
    monkeypatch.setattr(
        tracking.SweepTracker, "start", classmethod(lambda cls, uri, experiment, name, params: cls(uri, "1", "parent"))
    )
    monkeypatch.setattr(tracking.SweepTracker, "reopen_parent", lambda self: None)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)

    cfg, tracker = _open(tmp_path, "--tracking-uri", URI)
    assert tracker.tracking_uri == URI  # the real one connects
    assert cfg.tracking_uri == "http://alice:***@127.0.0.1:9"
    state = (tmp_path / "s" / "nsde_sweep.json").read_text()
    assert "s3cret" not in state and json.loads(state)["tracker"]["tracking_uri"] == cfg.tracking_uri

    with pytest.raises(
        TrackingError,
        match="pass --tracking-uri with the password again, or set MLFLOW_TRACKING_URI"
        ".*MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD",
    ):
        _open(tmp_path, "--resume")
    assert _open(tmp_path, "--resume", "--tracking-uri", URI)[1].tracking_uri == URI
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert _open(tmp_path, "--resume")[1].tracking_uri == "http://127.0.0.1:9"  # MLflow sends the variables
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    assert _open(tmp_path, "--resume")[1].tracking_uri == URI


def test_credentials_reach_local_ray_workers_but_not_the_jobs_runtime_env(monkeypatch):
    """A local Ray started as the sweep starts it (init_ray) inherits the driver's environment; the job's
    runtime_env, shown on Ray's dashboard and state API, holds no credentials."""
    import ray

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-for-the-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-for-the-test")
    cli.init_ray(None)
    try:

        @ray.remote(num_cpus=0)
        def seen():
            return (
                {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY")},
                dict(ray.get_runtime_context().runtime_env),
            )

        environment, task_runtime_env = ray.get(seen.remote())
        assert environment == {
            "MLFLOW_TRACKING_PASSWORD": "pw-for-the-test",
            "AWS_SECRET_ACCESS_KEY": "aws-for-the-test",
        }
        shown = json.dumps([dict(ray.get_runtime_context().runtime_env), task_runtime_env])
        assert "pw-for-the-test" not in shown and "aws-for-the-test" not in shown
    finally:
        ray.shutdown()
