"""The common image set: each model's per-image record, and models compared on the images all of them scored.

The evaluation's candidates are the first ``eval.num_images`` test images in the order that the
evaluation seed draws, the same for every model; each model is scored on the candidates it classifies
correctly (:func:`nsde_ray.evaluate.select_eval_images`), so the image sets of two models are subsets of
one common set. Its per-image record (:data:`ARTIFACT_PER_IMAGE`, one row per candidate and evaluation
repeat) keys each row by ``seed`` (the repeat's evaluation seed) and ``index`` (the candidate's index in
the test split), with its ``label``, ``scored`` (1 where the model classified it correctly, and was
scored on it) and the per-image values of the metrics where it was scored (empty elsewhere):
``sensitivity_<m>``, ``sic_<m>`` and ``aic_<m>`` (each image's own AUC), ``sic_knots_<m>`` (its SIC
curve's knots, ``x:y`` pairs, from which the data-set SIC, the AUC of the median curve, is recomputed),
``infidelity_<m>`` and, where the data set has masks, ``localisation_auc_<m>``.

:func:`compare` puts the models of each architecture and training seed on the candidates that every one of
them scored, per evaluation seed: their sensitivity, SIC and localisation are recomputed on that
intersection (:data:`RESTRICTED`) and averaged over repeats as :func:`nsde_ray.evaluate.evaluate_repeated`
does; the logged metrics stay each model's means over all the candidates it scored.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from nsde_ray.aggregate import mean_and_spread

if TYPE_CHECKING:
    from nsde_ray.tables import ModelResult

ARTIFACT_PER_IMAGE = "eval_per_image.csv"
KEYS = ("seed", "index", "label", "scored")
Row = dict[str, float | str]  # one candidate of one repeat: KEYS as numbers, metric values, knots as text


def encode_knots(knots: np.ndarray | None) -> str:
    """(2, K) curve knots (x; y) as ``x:y`` pairs separated by spaces, exact (``repr``); "" for None."""
    return "" if knots is None else " ".join(f"{x!r}:{y!r}" for x, y in zip(knots[0].tolist(), knots[1].tolist()))


def decode_knots(text: str) -> np.ndarray | None:
    """:func:`encode_knots`'s inverse: (2, K) knots, or None for ""."""
    if not text:
        return None
    return np.array([[float(v) for v in pair.split(":")] for pair in text.split()]).T


def write_csv(path: str, rows: list[Row]) -> str:
    """``rows`` (every row the same columns) as a CSV file at ``path``; returns ``path``."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(
            {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()} for row in rows
        )
    return path


def read_csv(path: str) -> list[Row]:
    """The rows :func:`write_csv` wrote: keys and metric values as numbers (NaN where empty), knots as text."""
    with open(path, newline="") as handle:
        return [
            {k: v if k.startswith("sic_knots_") else (float(v) if v else math.nan) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def _sensitivity(values: list) -> float:
    import torch

    from nsde_ray.metrics.sensitivity import mean_sensitivity

    return mean_sensitivity(torch.tensor(values, dtype=torch.float32))[0]


def _sic(knots: list) -> float:
    from nsde_ray.metrics.pic import median_auc

    return median_auc([decode_knots(k) for k in knots])


def _localisation(values: list) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


# per-image column prefix -> (the metric's prefix, its data-set value from the per-image values of a set of images)
RESTRICTED: dict[str, tuple[str, Callable[[list], float]]] = {
    "sensitivity_": ("sensitivity_", _sensitivity),
    "sic_knots_": ("sic_", _sic),
    "localisation_auc_": ("localisation_auc_", _localisation),
}


def repeat_metrics(rows: list[Row], columns: Iterable[str]) -> dict[str, float]:
    """The :data:`RESTRICTED` metrics of ``columns`` (per-image column names) on the scored images among ``rows`` (one
    repeat); NaN where there are none."""
    scored = [row for row in rows if row["scored"] == 1]
    metrics = {}
    for column in columns:
        for prefix, (metric, value) in RESTRICTED.items():
            if column.startswith(prefix):
                values = [row[column] for row in scored]
                metrics[metric + column.removeprefix(prefix)] = value(values) if values else math.nan
    return metrics


def scored_indices(rows: Iterable[Row], seed: float) -> set[int]:
    """The test-split indices of the candidates of evaluation seed ``seed`` that ``rows`` scored."""
    return {int(row["index"]) for row in rows if row["seed"] == seed and row["scored"] == 1}


def metrics_on(rows: list[Row], common: dict[float, set[int]]) -> dict[str, float]:
    """One model's :data:`RESTRICTED` metrics on the images ``common`` (evaluation seed -> test indices): per repeat,
    then mean over repeats (NaN repeats left out) and, with more than one, ``<name>_std``."""
    per_repeat = [
        repeat_metrics([row for row in rows if row["seed"] == seed and int(row["index"]) in indices], rows[0])
        for seed, indices in sorted(common.items())
    ]
    metrics: dict[str, float] = {}
    for name in per_repeat[0] if per_repeat else ():
        mean, std = mean_and_spread([repeat[name] for repeat in per_repeat], skip_nan=True)
        metrics[name] = mean
        if len(per_repeat) > 1:
            metrics[f"{name}_std"] = std
    return metrics


def compare(results: list[ModelResult]) -> tuple[list[ModelResult], list[str]]:
    """``results`` with each model's :data:`RESTRICTED` metrics on the candidates that every model of its architecture
    and training seed scored (per evaluation seed), and notes that say on how many images, and which models had no
    per-image record (:attr:`ModelResult.per_image` None: evaluated before it existed; they keep their logged means).
    """
    groups: dict[tuple[str, int], list[ModelResult]] = {}
    for result in results:
        if result.per_image is not None:
            groups.setdefault((result.arch, result.seed), []).append(result)
    compared: dict[int, ModelResult] = {}
    counts: list[tuple[int, int]] = []  # (common images, candidates) per architecture, training seed and repeat
    for models in groups.values():
        seeds = sorted({row["seed"] for model in models for row in model.per_image})
        common = {seed: set.intersection(*(scored_indices(m.per_image, seed) for m in models)) for seed in seeds}
        candidates = {seed: max(sum(row["seed"] == seed for row in m.per_image) for m in models) for seed in seeds}
        counts += [(len(common[seed]), candidates[seed]) for seed in seeds]
        for model in models:
            metrics = {**model.metrics, **metrics_on(model.per_image, common)}
            compared[id(model)] = dataclasses.replace(model, metrics=metrics)
    return [compared.get(id(r), r) for r in results], common_notes(counts, [r for r in results if r.per_image is None])


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)} to {max(values)}"


def common_notes(counts: list[tuple[int, int]], unrecorded: list[ModelResult]) -> list[str]:
    """The notes of :func:`compare`: ``counts`` (common images, candidates) per architecture, training seed and
    evaluation repeat; ``unrecorded``, the models without a per-image record."""
    notes = []
    if counts:
        common, candidates = zip(*counts)
        notes.append(
            f"common images: sensitivity, SIC and localisation are scored on the {_span(list(common))} of "
            f"{_span(list(candidates))} candidate images (per evaluation repeat) every model of the same architecture "
            "and training seed classifies correctly, so the models compared in a row saw the same images; each "
            "model's logged metrics are its means over all the candidates it classifies correctly"
        )
    if unrecorded:
        names = ", ".join(f"{r.arch}/{r.mode}/seed {r.seed}" for r in unrecorded)
        notes.append(
            f"no per-image record for {len(unrecorded)} models ({names}; evaluated before per-image records "
            "existed): their cells are their logged means, each over the images that model classified correctly, "
            "not over images common to the models compared"
        )
    return notes
