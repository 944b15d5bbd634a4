"""The cluster path of README's "Running on a cluster", for real on one machine: the session's smoke sweep
(tests/conftest.py) ran the README's own command line against a PostgreSQL-backed ``mlflow server`` and a Ray
head and worker started with ``ray start``. Here: every trial is in PostgreSQL, and both nodes trained.
"""

import mlflow
import psycopg2
import pytest
from helpers import require, seed_runs, trial_runs

pytestmark = pytest.mark.slow


def test_readme_smoke_sweep_on_a_ray_start_cluster_logs_every_trial_to_postgres(smoke_sweep):
    require(smoke_sweep.postgres is not None, "PostgreSQL is not installed here (apt-get install postgresql)")
    uri, name = smoke_sweep.uri, smoke_sweep.name
    assert "3 trials, 3 evaluated, 0 failed" in smoke_sweep.output

    client = mlflow.MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], filter_string="tags.`nsde.role` = 'sweep'"
    )
    trials = trial_runs(uri, name)
    assert len(parent) == 1 and len(trials) == 3
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.data.tags["nsde.status"] == "finished" and run.info.status == "FINISHED"
        assert {"val_accuracy", "sensitivity", "sic"} <= set(run.data.metrics)
    # the trials' seeds trained on both nodes: the worker node really took part
    seeds = seed_runs(uri, name)
    # 2 seeds each, then (--seeds-per-config auto) up to 2.5 seed runs per configuration in all
    assert len(seeds) == sum(int(run.data.metrics["seeds"]) for run in trials)
    assert 2 * len(trials) <= len(seeds) <= (5 * len(trials)) // 2
    assert len({node for run in seeds for node in run.data.tags["nsde.train_nodes"].split(",")}) == 2

    with psycopg2.connect(smoke_sweep.postgres) as db, db.cursor() as cursor:  # rows of MLflow's schema
        cursor.execute(
            "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
            "JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE e.name = %s AND t.key = 'nsde.role' AND t.value = 'trial'",
            (name,),
        )
        assert {row[0] for row in cursor.fetchall()} == {run.info.run_id for run in trials}
