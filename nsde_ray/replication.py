"""Adaptive replication (``--seeds-per-config auto``): more seeds only where the front is undecided.

After the search, every configuration has :data:`nsde_ray.config.AUTO_START_SEEDS` seeds. Each round
then assesses the front (:mod:`nsde_ray.front`, the moderated uncertainty model) and gives one more seed
to each configuration whose membership probability lies in ``undecided_band`` (bounds included;
default :data:`nsde_ray.uncertainty.BAND`, 0.1 to 0.9), most undecided first
(:func:`nsde_ray.uncertainty.next_seeds`), until none is undecided, each has ``max_seeds``, or the
sweep has spent ``total_seed_budget`` seed runs.
A round's seeds run as a Tune grid, one trial per configuration (:func:`run_added_seed`): seed K of a
configuration is training seed ``seed + K``, the same K in every configuration, so the seeds stay
shared; it is a seed run nested under the configuration's run, whose aggregates, tags and the front
are updated as it finishes. The searcher saw the first seeds' means and is not told of added seeds:
they sharpen the front, not the search.

What a round does is read from MLflow, never remembered: after a crash (SIGKILL) and ``--resume``, a seed
run that did not finish is the first thing trained again, from its latest checkpoint and into the same
run, and the budget counts every seed run there is; so no seed is trained twice or lost. Only configurations
whose search trial finished get seeds: one that errored (a tracking-server outage, a failed node) keeps its
seeds for its own trial, which ``--resume`` runs again, and counts its first seeds as spent meanwhile.
"""

from __future__ import annotations

import json
import logging
import time

from ray import tune

from nsde_ray.config import AUTO_START_SEEDS, SweepConfig, TrialConfig
from nsde_ray.logs import configure, tune_verbosity
from nsde_ray.tracking import SEARCHED_TAG, SEED_INDEX, STATUS, TRIAL_ID, SweepTracker
from nsde_ray.uncertainty import next_seeds

log = logging.getLogger(__name__)
DONE = ("finished", "diverged")
REASON_TAG = "nsde.added_seeds"  # a configuration's membership probability each time it was given a seed


def replicate(cfg: SweepConfig, tracker: SweepTracker, log_level: int = logging.INFO) -> list[str]:
    """Add seeds round by round until the front is decided or the budget spent; returns the report's notes:
    which configurations got more seeds and why, and why the others did not."""
    from nsde_ray.sweep import FrontCallback, default_max_concurrent

    while True:
        seeds, spent = _seed_runs(tracker), _spent(tracker)
        pending = sorted(_unfinished(seeds))
        if pending:
            chosen, why = pending, "seed runs that did not finish"
        else:
            rows = _assessed(tracker)
            counts = [len(seeds.get(row["run_id"], [])) for row in rows]
            probabilities = [row["pareto_probability"] for row in rows]
            picked = next_seeds(probabilities, counts, cfg.max_seeds, cfg.total_seed_budget - spent, cfg.undecided_band)
            chosen, why = [rows[i]["run_id"] for i in picked], f"membership probability in {list(cfg.undecided_band)}"
            for i in picked:
                _record_reason(tracker, rows[i]["run_id"], probabilities[i], counts[i])
        if not chosen:
            break
        log.info(
            f"adaptive seeds: one more seed for {len(chosen)} configuration(s) ({why}); "
            f"{spent} of {cfg.total_seed_budget} seed runs spent"
        )
        tune.Tuner(
            added_seed_trainable(cfg, tracker.describe(), log_level),
            param_space={"configuration_run": tune.grid_search(chosen)},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent or default_max_concurrent(cfg)),
            run_config=tune.RunConfig(
                name=f"{cfg.name}_seeds_{spent}_{time.time_ns()}",
                storage_path=cfg.storage,
                verbose=tune_verbosity(log_level),
                callbacks=[FrontCallback(tracker.describe(), len(chosen), log_level)],
            ),
        ).fit()
        if pending and _unfinished(_seed_runs(tracker)) >= set(pending):
            log.warning(f"adaptive seeds: {len(pending)} seed run(s) failed again; the front keeps the seeds it has")
            break
    return seed_notes(cfg, tracker)


def seed_notes(cfg: SweepConfig, tracker: SweepTracker) -> list[str]:
    """How many seeds each configuration got under ``auto`` and why (its :data:`REASON_TAG`, else why it stopped)."""
    seeds, rows, spent = _seed_runs(tracker), _assessed(tracker), _spent(tracker)
    budget_left = cfg.total_seed_budget - spent
    notes = [
        f"adaptive seeds: every configuration started with {AUTO_START_SEEDS}; one more at a time while its "
        f"membership probability lay in {list(cfg.undecided_band)}, up to {cfg.max_seeds} each; {spent} of "
        f"{cfg.total_seed_budget} seed runs spent (column seeds)"
    ]
    settled = []
    for row in rows:
        count, p = len(seeds.get(row["run_id"], [])), row["pareto_probability"]
        low, high = cfg.undecided_band
        if low <= p <= high:
            stop = "at max_seeds" if count >= cfg.max_seeds else "budget spent" if budget_left <= 0 else "undecided"
        else:
            stop = "decided"
        added = tracker.client.get_run(row["run_id"]).data.tags.get(REASON_TAG)
        if added or stop != "decided":
            history = f"probability {added}, then " if added else "probability "
            notes.append(f"trial {row['trial_id']}: {count} seeds ({history}{p:.2f} now: {stop})")
        else:
            settled.append(row["trial_id"])
    if settled:
        notes.append(
            f"{len(settled)} configuration(s) kept {AUTO_START_SEEDS} seeds, their membership decided "
            f"(probability outside {list(cfg.undecided_band)}): trials {', '.join(settled)}"
        )
    waiting = [run.data.tags.get(TRIAL_ID, "") for run in tracker.trial_runs() if _status(run) not in DONE]
    if waiting:
        notes.append(
            f"{len(waiting)} configuration(s) whose search trial did not finish get no seeds added until --resume "
            f"has trained their first {AUTO_START_SEEDS}: trials {', '.join(sorted(waiting))}"
        )
    return notes


def _assessed(tracker: SweepTracker) -> list[dict]:
    """The front's rows that are not excluded (the configurations adaptive seeds may go to)."""
    return [row for row in tracker.assess().rows if not row["excluded"]]


def _record_reason(tracker: SweepTracker, run_id: str, probability: float, count: int) -> None:
    """Append "p after K seeds" to the configuration run's :data:`REASON_TAG` before it gets its next seed."""
    before = tracker.client.get_run(run_id).data.tags.get(REASON_TAG)
    entry = f"{probability:.2f} after {count}"
    tracker.client.set_tag(run_id, REASON_TAG, f"{before}, {entry}" if before else entry)


def _seed_runs(tracker: SweepTracker) -> dict[str, list]:
    """Every seed run (any status), by the configuration's run id, in seed order, of this sweep's configurations
    whose search trial finished: the others' seeds belong to their trial, which ``--resume`` runs again, and a
    configuration is finished only once all its first seeds are."""
    configurations = {run.info.run_id for run in tracker.trial_runs() if _status(run) in DONE}
    return {k: runs for k, runs in tracker.seeds_by_configuration(finished=False).items() if k in configurations}


def _spent(tracker: SweepTracker) -> int:
    """Seed runs spent: every configuration's seed runs, at least its first :data:`AUTO_START_SEEDS` (which a
    configuration whose search trial did not finish has still to train)."""
    seeds = tracker.seeds_by_configuration(finished=False)
    return sum(max(len(seeds.get(run.info.run_id, [])), AUTO_START_SEEDS) for run in tracker.trial_runs())


def _unfinished(seeds: dict[str, list]) -> set[str]:
    """The configuration runs among ``seeds`` (:func:`_seed_runs`) with a seed run that has not finished."""
    return {parent for parent, runs in seeds.items() for run in runs if _status(run) not in DONE}


def _status(run) -> str:
    return run.data.tags.get(STATUS, "running")


def run_added_seed(config: dict, base: dict, storage_path: str, tracker_ids: dict, log_level: int) -> None:
    """Tune's trainable of one added seed: the configuration run ``config["configuration_run"]`` gets its first
    unfinished seed, or else its next one, trained, evaluated and folded into its aggregates."""
    from nsde_ray.trial import finish_configuration, train_seed_run, trial_config

    configure(log_level)
    tracker = SweepTracker(**tracker_ids)
    run_id = config["configuration_run"]
    run = tracker.client.get_run(run_id)
    trial_id = run.data.tags[TRIAL_ID]
    cfg = trial_config(TrialConfig.from_dict(base), json.loads(run.data.tags[SEARCHED_TAG]))
    indices = {int(seed.data.tags[SEED_INDEX]): _status(seed) for seed in tracker.seed_runs(run_id)}
    unfinished = sorted(index for index, status in indices.items() if status not in DONE)
    index = unfinished[0] if unfinished else max(indices, default=-1) + 1
    label = f"trial {trial_id} added seed {index + 1}"
    train_seed_run(cfg, tracker, run_id, trial_id, index, label, storage_path, 1, log_level)
    outcomes = [(_status(seed), tracker.finished_metrics(seed.info.run_id)) for seed in tracker.seed_runs(run_id)]
    final = finish_configuration(tracker, run_id, [o for o in outcomes if o[0] in DONE], label)
    tune.report({"seeds": final["seeds"]})


def added_seed_trainable(cfg: SweepConfig, tracker_ids: dict[str, str], log_level: int = logging.INFO):
    """:func:`run_added_seed` as Tune's trainable, with a trial's resources (:func:`nsde_ray.trial.trial_trainable`)."""
    from nsde_ray.trial import sweep_trainable

    return sweep_trainable(run_added_seed, cfg, tracker_ids, log_level)
