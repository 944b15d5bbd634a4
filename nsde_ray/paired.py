"""Paired comparisons (``python -m sweeps.paper_tables --paired``): noisy models fine-tuned from the plain model of
their seed, against a plain control fine-tuned alongside them.

In the plain grid the models of one seed share their initial weights and data order but train
apart, so a comparison carries the whole spread of training. Paired, as the papers likely did:
stage 1 trains the plain model (noise ``none``) of every (arch, seed) for ``base.train.epochs``;
stage 2 fine-tunes every noise mode from that model's final checkpoint (``TrainConfig.init_from``)
for ``finetune_epochs`` with a restarted learning-rate schedule, ``none`` included: that plain
fine-tune is the control, trained exactly as long as the noisy models. A noisy model minus its
control, seed by seed (:func:`nsde_ray.tables.paired_table`), then measures what the noise did to
those weights, not what the extra epochs did; the plain model's own row in the other tables is its
stage-1 result. The grid has as many models as the plain one, plus one control per (arch, seed).

Both stages are Tune experiments inside the grid's directory, ``<storage>/<name>/plain`` and
``<storage>/<name>/finetune``, with their Train runs under each one's ``train/``. Each is restored
when it exists, so ``--resume`` keeps the finished trials of either stage (a fine-tune stage from
before the control keeps its grid, without it). Stage 2 reads the plain models' checkpoints as
files: ``storage`` must be a path that every node sees (local or NFS). A child run's stage
(:func:`stage_of`) is in its ``init_from``: stage 1 starts from the grid's, stage 2 from a plain
checkpoint. Child runs get the MLflow params ``paired = true`` and ``paired_stage`` (:data:`PLAIN`
or :data:`FINETUNE`), fine-tunes also ``finetune_epochs``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from nsde_ray.config import PaperTablesConfig
from nsde_ray.lifecycle import experiment_path, train_storage
from nsde_ray.sweep import build_grid_tuner

PLAIN, FINETUNE = "plain", "finetune"  # the stages' experiment names, and the values of STAGE_PARAM
STAGE_PARAM = "paired_stage"  # the MLflow param of a child run that names its stage
TRAIN_RUN = "trial_{}"  # the Ray Train run of Tune trial {}, as nsde_ray.trial.run_trial names it

log = logging.getLogger(__name__)


def stage(cfg: PaperTablesConfig, name: str, noise_modes: tuple[str, ...], epochs: int) -> PaperTablesConfig:
    """One stage's settings: a grid over ``noise_modes`` of ``epochs`` epochs, in the grid's experiment directory."""
    return replace(
        cfg,
        name=name,
        storage=experiment_path(cfg),
        noise_modes=noise_modes,
        paired=False,
        finetune_epochs=None,
        base=replace(cfg.base, train=replace(cfg.base.train, epochs=epochs)),
    )


def plain_stage(cfg: PaperTablesConfig) -> PaperTablesConfig:
    """Stage 1: the plain models, for the base epochs."""
    return stage(cfg, PLAIN, ("none",), cfg.base.train.epochs)


def finetune_stage(cfg: PaperTablesConfig) -> PaperTablesConfig:
    """Stage 2: every mode of the grid, ``none`` (the plain control) included, for ``finetune_epochs``."""
    return stage(cfg, FINETUNE, cfg.noise_modes, cfg.finetune_epochs)


def stage_of(cfg: PaperTablesConfig, params: dict[str, str]) -> str:
    """:data:`PLAIN` or :data:`FINETUNE`: the stage of the grid ``cfg`` that trained the child run with MLflow
    ``params``. Stage 1 starts from the grid's ``init_from`` (None: from scratch), stage 2 from a plain checkpoint."""
    return PLAIN if params.get("init_from") == str(cfg.base.train.init_from) else FINETUNE


def plain_checkpoints(cfg: PaperTablesConfig, tracker) -> dict[str, tuple[str, int]]:
    """{final checkpoint directory: (arch, seed)} of the finished stage-1 plain models, found from their MLflow
    runs (the plain controls of stage 2 are not among them)."""
    from nsde_ray.tracking import STATUS, TRIAL_ID
    from nsde_ray.train import last_checkpoint

    train_dir = train_storage(plain_stage(cfg))
    bases = {}
    for run in tracker.trial_runs():
        params, tags = run.data.params, run.data.tags
        if stage_of(cfg, params) == PLAIN and tags.get(STATUS) == "finished":
            checkpoint = last_checkpoint(train_dir, TRAIN_RUN.format(tags[TRIAL_ID]))
            bases[checkpoint.path] = (params["arch"], int(params["seed"]))
    return bases


class BaseOf:
    """Tune ``sample_from``: the arch (``index`` 0) or seed (1) of the plain model that a fine-tune starts from."""

    def __init__(self, bases: dict[str, tuple[str, int]], index: int) -> None:
        self.bases, self.index = bases, index

    def __call__(self, config: dict) -> str | int:
        return self.bases[config["init_from"]][self.index]


def finetune_space(bases: dict[str, tuple[str, int]], noise_modes: tuple[str, ...]) -> dict:
    """Stage 2's grid: every plain checkpoint x every mode of ``noise_modes``, with the checkpoint's arch and
    seed."""
    from ray import tune

    return {
        "init_from": tune.grid_search(sorted(bases)),
        "noise_mode": tune.grid_search(list(noise_modes)),
        "arch": tune.sample_from(BaseOf(bases, 0)),
        "seed": tune.sample_from(BaseOf(bases, 1)),
    }


def run(cfg: PaperTablesConfig, tracker, retry_errored: bool = True, log_level: int = logging.INFO) -> list:
    """Both stages, each restored where its experiment exists (errored trials run again unless not
    ``retry_errored``); returns the Tune results of both."""
    from ray import tune

    tracker_ids = tracker.describe()
    plain, finetune = plain_stage(cfg), finetune_stage(cfg)
    log.info(
        f"paired: stage 1 trains {plain.grid_size} plain models for {plain.base.train.epochs} epochs; "
        f"stage 2 fine-tunes {', '.join(finetune.noise_modes)} (none: the plain control) from each for "
        f"{cfg.finetune_epochs} epochs"
    )
    results = list(
        build_grid_tuner(
            plain,
            tracker_ids,
            resume=tune.Tuner.can_restore(experiment_path(plain)),
            retry_errored=retry_errored,
            log_level=log_level,
        ).fit()
    )
    mark_runs(tracker, cfg)
    bases = plain_checkpoints(cfg, tracker)
    if not bases:
        log.info("paired: no plain model finished, so nothing to fine-tune")
        return results
    trials = len(bases) * len(finetune.noise_modes)
    results += list(
        build_grid_tuner(
            finetune,
            tracker_ids,
            resume=tune.Tuner.can_restore(experiment_path(finetune)),
            param_space=finetune_space(bases, finetune.noise_modes),
            trials=trials,
            retry_errored=retry_errored,
            log_level=log_level,
        ).fit()
    )
    mark_runs(tracker, cfg)
    return results


def mark_runs(tracker, cfg: PaperTablesConfig) -> None:
    """Log ``paired = true`` and :data:`STAGE_PARAM` on every child run, and ``finetune_epochs`` on the fine-tunes,
    where not yet logged."""
    from mlflow.entities import Param

    for run in tracker.trial_runs():
        params = {"paired": "true", STAGE_PARAM: stage_of(cfg, run.data.params)}
        if params[STAGE_PARAM] == FINETUNE:
            params["finetune_epochs"] = str(cfg.finetune_epochs)
        new = [Param(key, value) for key, value in params.items() if key not in run.data.params]
        if new:
            tracker.client.log_batch(run.info.run_id, params=new)
