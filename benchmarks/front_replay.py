"""Replay the sweep's Pareto front on recorded per-seed outcomes: are its probabilities honest, what do seeds buy?

No training: reads the CSV(s) of :mod:`benchmarks.front_replay_record` (one row per configuration
and training seed; several files, e.g. its shards, are concatenated) and, in each of ``--replays``
replays, draws one random subset of seed ids used by every configuration (a real sweep's seeds
0..K-1, relabelled). Each subset is assessed as the sweep assesses it (seed means and SEs as
the sweep aggregates its seeds, then :func:`nsde_ray.front.assess_front`: same
objectives, SIC gating and exclusions), under these policies:

- ``today K`` (K = 2, 3, 4 seeds each): :func:`nsde_ray.pareto.front_probability` (each configuration's
  own SE, normal, independent);
- ``moderated K`` (the same K): :func:`nsde_ray.uncertainty.front_probability` (seed-blocked, moderated variances,
  t tails, the evaluation-repeat variance of every ``<objective>_eval1`` pair as floor; that
  variance is a one-off calibration of the evaluation, so it comes from all recorded pairs);
- ``adaptive +B``: 2 seeds each, then :func:`nsde_ray.uncertainty.next_seeds` (band 0.1-0.9, and
  0.05-0.95 with the largest B; at most every seed recorded) gives one more seed to each undecided
  configuration, round after round, until the front is decided or B extra seed-runs are spent.

The truth is the front of the means over every seed all configurations have (with its own SIC
gating). Scores: Brier score; a reliability table (probability bins: mean predicted, observed
frequency with a 90% interval that resamples configurations, count, distinct configurations); how
often a confident prediction (>= 0.95 or <= 0.05) is wrong; membership errors per replay against the
seed-runs spent, both of the probability (>= 0.5 against the truth) and of the front on the means
(the ``*`` a sweep prints, which only the seeds change: fixed K at 2, 3 and 4 against adaptive
budgets is the cost curve at equal seed-runs), and each adaptive policy's difference in those errors
from fixed K = 3 and K = 4, with an interval that resamples configurations. The truth
shares seeds with every subset, so larger subsets look better than they would against fresh seeds;
``--held-out`` (8 seeds or more) scores each replay against the front of the half of the seeds its
policies did not see instead, a truth as noisy as that half.

    python benchmarks/front_replay.py benchmarks/data/front_replay_digits.csv.shard0 \\
        benchmarks/data/front_replay_digits.csv.shard1 [--replays 200] [--draws 2000] [--held-out] [--out PATH]

Markdown tables go to stdout and to ``--out`` (default ``benchmarks/data/front_replay_<design>.md``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nsde_ray import front, pareto, uncertainty  # noqa: E402
from nsde_ray.aggregate import mean_and_spread  # noqa: E402

OBJECTIVES = (("val_accuracy", "max"), ("sensitivity", "min"), ("sic", "max"))  # the recorded objectives
METRICS = ("val_accuracy", "sensitivity", "sic", "sic_valid_fraction_ig", "randomisation_passed_ig", "noise_energy")
BINS = (0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0)
BUDGETS = (0.5, 1.0, 2.0, 4.0)  # adaptive policies' extra seed-runs, in multiples of the configuration count
WIDE_BAND = (0.05, 0.95)  # the band the largest budget is also replayed with, against uncertainty.BAND
START_SEEDS = 2
FIXED_SEEDS = (2, 3, 4)  # the fixed-replication policies' seeds per configuration


@dataclass
class Design:
    """Recorded outcomes: configuration ids (N,), runs[(config, seed)] metrics, common seeds."""

    name: str
    configs: list[str]
    runs: dict[tuple[str, int], dict[str, float]]
    seeds: list[int]


def load(paths: list[str]) -> Design:
    """The design of the CSV rows in ``paths``; only the seeds every configuration has are kept."""
    rows = []
    for path in paths:
        with open(path, newline="") as handle:
            rows.extend(csv.DictReader(handle))
    if not rows:
        raise SystemExit(f"no rows in {', '.join(paths)}")
    configs = list(dict.fromkeys(row["config_id"] for row in rows))
    runs = {
        (row["config_id"], int(row["seed"])): {
            k: float(v) for k, v in row.items() if k in METRICS or k.endswith("_eval1")
        }
        for row in rows
    }
    seeds = sorted(set.intersection(*({s for c, s in runs if c == config} for config in configs)))
    return Design(rows[0]["design"], configs, runs, seeds)


def eval_variances(design: Design) -> dict[str, float]:
    """Per objective with ``<name>_eval1`` columns: the variance of one evaluation (units²), over all pairs."""
    pairs = [
        run for run in design.runs.values() if any(math.isfinite(v) for k, v in run.items() if k.endswith("_eval1"))
    ]
    names = [name for name, _ in OBJECTIVES if pairs and f"{name}_eval1" in pairs[0]]
    first = np.array([[run[name] for name in names] for run in pairs]).reshape(len(pairs), len(names))
    second = np.array([[run[f"{name}_eval1"] for name in names] for run in pairs]).reshape(len(pairs), len(names))
    return dict(zip(names, uncertainty.eval_variance(first, second)))


def aggregate(runs: list[dict[str, float]]) -> dict[str, float]:
    """A configuration's row from its seeds' runs (K): every metric's mean, and the objectives' SE (std / sqrt(K))."""
    row = {name: float(np.mean([run[name] for run in runs])) for name in METRICS}
    for name, _ in OBJECTIVES:
        values = [run[name] for run in runs]
        row[f"{name}_se"] = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return row


def assess(
    design: Design, seed_sets: list[list[int]], eval_var: dict[str, float], draws: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(today's probabilities (N,), the model's probabilities (N,), front on the means (N,)), each configuration
    with its ``seed_sets`` (N lists)."""
    per_seed = [[design.runs[config, s] for s in seeds] for config, seeds in zip(design.configs, seed_sets)]
    rows = [aggregate(runs) for runs in per_seed]
    report = front.assess_front(rows)
    eligible = [i for i, row in enumerate(rows) if not row["excluded"]]
    model = np.zeros(len(rows))
    fitted = uncertainty.fit(
        [pareto.as_minimisation(per_seed[i], report.objectives) for i in eligible],
        [seed_sets[i] for i in eligible],
        np.array([eval_var.get(name, math.nan) for name, _ in report.objectives]),
    )
    model[eligible] = uncertainty.front_probability(fitted, draws=draws)
    return (
        np.array([row["pareto_probability"] for row in rows]),
        model,
        np.array([row["pareto_front"] for row in rows]),
    )


def adaptive(
    design: Design,
    order: np.ndarray,
    extra: int,
    eval_var: dict[str, float],
    draws: int,
    band: tuple[float, float] = uncertainty.BAND,
) -> tuple[np.ndarray, int, np.ndarray]:
    """(the model's probabilities (N,), seed-runs spent, front on the means (N,)) of the adaptive policy, seeds
    taken in ``order``."""
    counts, spent = np.full(len(design.configs), START_SEEDS), 0
    while True:
        _, probability, on_means = assess(design, [list(order[:k]) for k in counts], eval_var, draws)
        chosen = uncertainty.next_seeds(probability, counts, len(order), extra - spent, band)
        if not len(chosen):
            return probability, int(counts.sum()), on_means
        counts[chosen] += 1
        spent += len(chosen)


def replay(
    design: Design, replays: int, draws: int, seed: int, held_out: bool = False
) -> tuple[np.ndarray, dict[str, list]]:
    """(all-seeds truth (N,) bool, {policy: [(probabilities (N,), seed-runs, truth (N,), front on the means (N,))]
    per replay}).

    ``held_out``: each replay's policies see the first half of its seed order and are scored against
    the front of the other half (a truth no subset shares seeds with, but one as noisy as half the seeds).
    """
    eval_var = eval_variances(design)
    _, _, everything = assess(design, [design.seeds] * len(design.configs), eval_var, draws)
    rng, results = np.random.default_rng(seed), {}
    n, half = len(design.configs), len(design.seeds) // 2
    for _ in range(replays):
        order = rng.permutation(design.seeds)
        truth = everything
        if held_out:
            _, _, truth = assess(design, [list(order[half:])] * n, eval_var, draws)
            order = order[:half]
        for k in FIXED_SEEDS:
            today, model, on_means = assess(design, [list(order[:k])] * n, eval_var, draws)
            results.setdefault(f"today K={k}", []).append((today, k * n, truth, on_means))
            results.setdefault(f"moderated K={k}", []).append((model, k * n, truth, on_means))
        for budget in BUDGETS:
            extra = int(round(budget * n))
            probability, spent, on_means = adaptive(design, order, extra, eval_var, draws)
            results.setdefault(f"adaptive +{extra}", []).append((probability, spent, truth, on_means))
        probability, spent, on_means = adaptive(design, order, extra, eval_var, draws, WIDE_BAND)
        results.setdefault(f"adaptive +{extra}, band {WIDE_BAND[0]}-{WIDE_BAND[1]}", []).append(
            (probability, spent, truth, on_means)
        )
    return everything, results


def _stacked(outcomes: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A policy's replays as arrays: (probabilities (R, N), truth (R, N) bool, front on the means (R, N) bool,
    seed-runs (R,))."""
    probability, runs, truth, on_means = zip(*outcomes)
    return np.stack(probability), np.stack(truth).astype(bool), np.stack(on_means).astype(bool), np.array(runs)


def _configuration_weights(configs: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, configs) how often each configuration is drawn in each bootstrap resample (with replacement)."""
    return np.random.default_rng(seed).multinomial(configs, np.full(configs, 1.0 / configs), size=resamples)


def scores(outcomes: list) -> dict[str, float]:
    """Brier score, confident predictions and their wrong fraction, membership errors (probability >= 0.5, and the
    front on the means) and seed-runs, per replay."""
    probability, observed, on_means, runs = _stacked(outcomes)
    confident = (probability >= 0.95) | (probability <= 0.05)
    wrong = confident & ((probability >= 0.5) != observed)
    return {
        "brier": float(np.mean((probability - observed) ** 2)),
        "confident": int(confident.sum()),
        "confident_wrong": float(wrong.sum() / max(confident.sum(), 1)),
        "errors": float(np.sum((probability >= 0.5) != observed) / len(outcomes)),
        "front_errors": float(np.sum(on_means != observed) / len(outcomes)),
        "seed_runs": float(runs.mean()),
    }


def reliability(outcomes: list, resamples: int = 2000, seed: int = 0) -> list[tuple]:
    """(bin, mean predicted, observed frequency, its 90% interval (low, high), count, configurations) per bin of
    :data:`BINS`.

    A configuration's predictions over the replays move together (the same configuration, seeds drawn
    from the same few), so a bin's count overstates its evidence: ``configurations`` says how many
    distinct ones it holds, and the interval resamples configurations (with replacement, each with
    all its predictions), the percentile bootstrap's 5% and 95%. It leaves out the replays' shared seeds.
    """
    probability, observed, _, _ = _stacked(outcomes)
    index = np.clip(np.searchsorted(BINS, probability, side="right") - 1, 0, len(BINS) - 2)
    weights = _configuration_weights(probability.shape[1], resamples, seed)
    rows = []
    for b in range(len(BINS) - 1):
        in_bin = index == b
        count, hits = in_bin.sum(axis=0), (in_bin & observed).sum(axis=0)  # per configuration
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (weights @ hits) / (weights @ count)
        low, high = np.nanquantile(boot, [0.05, 0.95]) if count.any() else (math.nan, math.nan)
        rows.append(
            (
                f"[{BINS[b]:.2f}, {BINS[b + 1]:.2f}{']' if b == len(BINS) - 2 else ')'}",
                float(probability[in_bin].mean()) if in_bin.any() else math.nan,
                float(observed[in_bin].mean()) if in_bin.any() else math.nan,
                (float(low), float(high)),
                int(count.sum()),
                int((count > 0).sum()),
            )
        )
    return rows


def cost_comparisons(results: dict[str, list], resamples: int = 2000, seed: int = 0) -> list[str]:
    """Markdown rows: each adaptive policy against fixed moderated K = 3 and K = 4, the difference in membership
    errors per replay (adaptive minus fixed; of the probability and of the front on the means) with a 90% interval
    that resamples configurations, as :func:`reliability` does (the replays' shared seeds are left out)."""

    def errors(outcomes: list) -> tuple[tuple[np.ndarray, np.ndarray], float]:  # ((R, N) each, mean seed-runs)
        probability, truth, on_means, runs = _stacked(outcomes)
        return ((probability >= 0.5) != truth, on_means != truth), float(runs.mean())

    per_policy = {policy: errors(outcomes) for policy, outcomes in results.items()}
    configs = next(iter(per_policy.values()))[0][0].shape[1]
    rows, weights = [], _configuration_weights(configs, resamples, seed)
    for policy in [p for p in results if p.startswith("adaptive")]:
        mine, spent = per_policy[policy]
        for fixed in [f"moderated K={k}" for k in FIXED_SEEDS if k > START_SEEDS]:
            theirs, fixed_runs = per_policy[fixed]
            cells = []
            for own, other in zip(mine, theirs):
                per_config = (own.astype(float) - other).sum(axis=0) / len(own)  # (N,), per replay
                low, high = np.quantile(weights @ per_config, [0.05, 0.95])
                cells.append(f"{per_config.sum():+.2f} ({low:+.2f} to {high:+.2f})")
            rows.append(f"| {policy} ({spent:.1f}) | {fixed} ({fixed_runs:.0f}) | {cells[0]} | {cells[1]} |")
    return [
        "| adaptive (seed-runs) | against (seed-runs) | probability errors / replay, difference (90% interval) "
        "| front-on-the-means errors / replay, difference (90% interval) |",
        "|---|---|---|---|",
        *rows,
    ]


def spreads(design: Design) -> list[str]:
    """Per objective, over every common seed: raw seed SD, the configurations' median seed-blocked residual SD and
    the moderation's prior (:func:`nsde_ray.uncertainty.fit`), evaluation SD (units)."""
    values = [pareto.as_minimisation([design.runs[c, s] for s in design.seeds], OBJECTIVES) for c in design.configs]
    finite = [v for v in values if np.isfinite(v).all()]
    raw = np.sqrt(sum(((v - v.mean(axis=0)) ** 2).sum(axis=0) for v in finite) / sum(len(v) - 1 for v in finite))
    fitted = uncertainty.fit(finite, [design.seeds] * len(finite))
    blocked = np.median(np.sqrt(fitted.variance), axis=0)
    evals = eval_variances(design)
    lines = [
        "| objective | seed SD (within configuration) | residual SD, median of the configurations (seed-blocked, "
        "moderated) | moderation prior: s0, nu0 | evaluation SD |",
        "|---|---|---|---|---|",
    ]
    for m, (name, _) in enumerate(OBJECTIVES):
        prior_sd, prior_dof = math.sqrt(fitted.prior[m, 0]), fitted.prior[m, 1]
        lines.append(
            f"| {name} | {raw[m]:.4g} | {blocked[m]:.4g} | {prior_sd:.4g}, {prior_dof:.3g} | "
            f"{math.sqrt(evals.get(name, math.nan)):.4g} |"
        )
    return lines


def configuration_means(design: Design) -> list[str]:
    """Per configuration, each objective's mean ± SD over the common seeds (units of the objective)."""
    lines = [
        "| configuration | " + " | ".join(f"{name} ({direction})" for name, direction in OBJECTIVES) + " |",
        "|---|" + "---|" * len(OBJECTIVES),
    ]
    for config in design.configs:
        cells = [mean_and_spread([design.runs[config, seed][name] for seed in design.seeds]) for name, _ in OBJECTIVES]
        lines.append(f"| {config} | " + " | ".join(f"{mean:.4f} ± {sd:.4f}" for mean, sd in cells) + " |")
    return lines


def markdown(design: Design, truth: np.ndarray, results: dict[str, list], replays: int, held_out: bool) -> str:
    """The report: data, scores and cost, reliability."""
    lines = [
        f"# Front replay: {design.name}",
        "",
        f"{len(design.configs)} configurations x {len(design.seeds)} common seeds ({design.seeds}); "
        f"{replays} replays. All-seeds front: {', '.join(c for c, t in zip(design.configs, truth) if t)}. Truth: "
        + (
            "the front of the half of the seeds each replay's policies did not see (held out)."
            if held_out
            else "the front of all seeds (which every subset shares seeds with)."
        ),
        "",
        *configuration_means(design),
        "",
        *spreads(design),
        "",
        "| policy | seed-runs | membership errors / replay (probability >= 0.5) | front on the means: errors / "
        "replay | Brier | confident (<=0.05 or >=0.95) | of them wrong |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy, outcomes in results.items():
        s = scores(outcomes)
        lines.append(
            f"| {policy} | {s['seed_runs']:.1f} | {s['errors']:.2f} | {s['front_errors']:.2f} | {s['brier']:.4f} | "
            f"{s['confident']} | {s['confident_wrong']:.3f} |"
        )
    lines += ["", *cost_comparisons(results)]
    lines += [
        "",
        "| policy | probability bin | mean predicted | observed frequency | 90% interval (configurations resampled) "
        "| count | configurations |",
        "|---|---|---|---|---|---|---|",
    ]
    for policy, outcomes in results.items():
        if policy.startswith(("today", "moderated")):
            lines += [
                f"| {policy} | {b} | {p:.3f} | {o:.3f} | {low:.2f}-{high:.2f} | {n} | {c} |"
                if n
                else f"| {policy} | {b} | - | - | - | 0 | 0 |"
                for b, p, o, (low, high), n, c in reliability(outcomes)
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="recorded rows (front_replay_record.py's --out, or its shards)")
    parser.add_argument("--replays", type=int, default=200)
    parser.add_argument("--draws", type=int, default=2000, help="draws per front probability")
    parser.add_argument("--seed", type=int, default=0, help="seeds the replays' seed subsets")
    parser.add_argument(
        "--held-out", action="store_true", help="score against the front of the seeds a replay did not see"
    )
    parser.add_argument("--out", default=None, help="Markdown file (default benchmarks/data/front_replay_<design>.md)")
    args = parser.parse_args()
    design = load(args.csv)
    needed = 8 if args.held_out else 4
    if len(design.seeds) < needed:
        raise SystemExit(f"{len(design.seeds)} seeds common to every configuration; this replay needs {needed}")
    truth, results = replay(design, args.replays, args.draws, args.seed, args.held_out)
    text = markdown(design, truth, results, args.replays, args.held_out)
    print(text)
    suffix = "_held_out" if args.held_out else ""
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "data", f"front_replay_{design.name}{suffix}.md"
    )
    with open(out, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
