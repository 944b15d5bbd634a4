"""Paired comparisons (``python -m sweeps.paper_tables --paired``): noisy models fine-tuned from the plain model of
their seed.

In the plain grid the models of one seed share their initial weights and data order but train
apart, so a comparison carries the whole spread of training. Paired, as the papers likely did:
stage 1 trains the plain model (noise ``none``) of every (arch, seed) for ``base.train.epochs``;
stage 2 fine-tunes every other noise mode from that model's final checkpoint
(``TrainConfig.init_from``) for ``finetune_epochs``. A noisy model minus its plain model, seed by
seed (:func:`nsde_ray.tables.paired_table`), then measures what the noise did to those weights;
the plain model's own row is its stage-1 result. The grid has as many models as the plain one.

Both stages are Tune experiments inside the grid's directory, ``<storage>/<name>/plain`` and
``<storage>/<name>/finetune``, with their Train runs under each one's ``train/``. Each is restored
when it exists, so ``--resume`` keeps the finished trials of either stage. Stage 2 reads the plain
models' checkpoints as files: ``storage`` must be a path that every node sees (local or NFS).
Child runs get the MLflow params ``paired = true``, fine-tunes also ``finetune_epochs`` (and, as
every trial, ``init_from``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from nsde_ray.config import PaperTablesConfig
from nsde_ray.lifecycle import experiment_path, train_storage
from nsde_ray.sweep import build_grid_tuner

PLAIN, FINETUNE = "plain", "finetune"  # the stages' experiment names
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
    return stage(cfg, PLAIN, ("none",), cfg.base.train.epochs)


def finetune_stage(cfg: PaperTablesConfig) -> PaperTablesConfig:
    return stage(cfg, FINETUNE, tuple(m for m in cfg.noise_modes if m != "none"), cfg.finetune_epochs)


def plain_checkpoints(cfg: PaperTablesConfig, tracking) -> dict[str, tuple[str, int]]:
    """{final checkpoint directory: (arch, seed)} of the finished plain models, found from their MLflow runs."""
    from nsde_ray.tracking import STATUS, TRIAL_ID
    from nsde_ray.train import last_checkpoint

    train_dir = train_storage(plain_stage(cfg))
    bases = {}
    for run in tracking.trial_runs():
        params, tags = run.data.params, run.data.tags
        if params.get("noise_mode") == "none" and tags.get(STATUS) == "finished":
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
    """Stage 2's grid: every plain checkpoint x every noisy mode, with the checkpoint's arch and seed."""
    from ray import tune

    return {
        "init_from": tune.grid_search(sorted(bases)),
        "noise_mode": tune.grid_search(list(noise_modes)),
        "arch": tune.sample_from(BaseOf(bases, 0)),
        "seed": tune.sample_from(BaseOf(bases, 1)),
    }


def run(cfg: PaperTablesConfig, tracking, retry_errored: bool = True, log_level: int = logging.INFO) -> list:
    """Both stages, each restored where its experiment exists (errored trials run again unless not
    ``retry_errored``); returns the Tune results of both."""
    from ray import tune

    tracker = tracking.describe()
    plain, finetune = plain_stage(cfg), finetune_stage(cfg)
    log.info(
        f"paired: stage 1 trains {plain.grid_size} plain models for {plain.base.train.epochs} epochs; "
        f"stage 2 fine-tunes {', '.join(finetune.noise_modes)} from each for {cfg.finetune_epochs} epochs"
    )
    results = list(
        build_grid_tuner(
            plain,
            tracker,
            resume=tune.Tuner.can_restore(experiment_path(plain)),
            retry_errored=retry_errored,
            log_level=log_level,
        ).fit()
    )
    mark_runs(tracking, cfg)
    bases = plain_checkpoints(cfg, tracking)
    if not bases:
        log.info("paired: no plain model finished, so nothing to fine-tune")
        return results
    trials = len(bases) * len(finetune.noise_modes)
    results += list(
        build_grid_tuner(
            finetune,
            tracker,
            resume=tune.Tuner.can_restore(experiment_path(finetune)),
            param_space=finetune_space(bases, finetune.noise_modes),
            trials=trials,
            retry_errored=retry_errored,
            log_level=log_level,
        ).fit()
    )
    mark_runs(tracking, cfg)
    return results


def mark_runs(tracking, cfg: PaperTablesConfig) -> None:
    """Log ``paired = true`` on every child run, and ``finetune_epochs`` on the fine-tunes, where not yet logged."""
    from mlflow.entities import Param

    for run in tracking.trial_runs():
        params = {"paired": "true"}
        if run.data.params.get("noise_mode") != "none":
            params["finetune_epochs"] = str(cfg.finetune_epochs)
        new = [Param(key, value) for key, value in params.items() if key not in run.data.params]
        if new:
            tracking.client.log_batch(run.info.run_id, params=new)
