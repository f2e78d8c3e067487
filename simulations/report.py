"""Evidence report: a markdown table (mean ± sample std over seeds) and two PNG plots."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from itertools import cycle, product
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt

from simulations.evidence import REPORTED, VARIANTS

Key = tuple[str, str, float]  # grid, variant, epsilon (inf = DP off)


def load_summaries(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in paths]


def _eps(value: float | None) -> float:
    return math.inf if value is None else float(value)


def group_cells(summaries: list[dict[str, Any]]) -> dict[Key, list[dict[str, Any]]]:
    """Main-grid cells (default skew) grouped by (grid, variant, ε)."""
    groups: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        if s["skew"] is None:
            groups[(s["grid"], s["variant"], _eps(s["epsilon"]))].append(s)
    return groups


def _cell(values: list[float]) -> str:
    """Mean ± sample standard deviation (n − 1; 0 for a single seed)."""
    if not values:
        return "–"
    return f"{mean(values):.3f} ± {stdev(values) if len(values) > 1 else 0.0:.3f}"


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    """One row per (grid, variant, ε): mean ± std over seeds of every reported metric."""
    header = ["data", "variant", "ε", "seeds", *REPORTED]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (grid, variant, eps), cells in sorted(group_cells(summaries).items()):
        row = [grid, variant, "∞" if math.isinf(eps) else f"{eps:g}", str(len(cells))]
        row += [_cell([c[m] for c in cells if c.get(m) is not None]) for m in REPORTED]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def skew_table(summaries: list[dict[str, Any]]) -> str:
    """Skew cells, plus the main cells of the same (data, variant, ε) at the grid's own α."""
    skewed = [s for s in summaries if s["skew"] is not None]
    if not skewed:
        return ""
    compared = {(s["grid"], s["variant"], _eps(s["epsilon"])) for s in skewed}
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        if (s["grid"], s["variant"], _eps(s["epsilon"])) in compared:
            groups[(s["grid"], s["variant"], float(s["partition_alpha"]))].append(s)
    lines = ["| data | variant | partition α | seeds | accuracy | worst_group_accuracy | gap |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (grid, variant, alpha), cells in sorted(groups.items()):
        lines.append(
            f"| {grid} | {variant} | {alpha:g} | {len(cells)} | "
            f"{_cell([c['accuracy'] for c in cells])} | "
            f"{_cell([c['worst_group_accuracy'] for c in cells])} | "
            f"{_cell([c['group_accuracy_gap'] for c in cells])} |"
        )
    return "\n".join(lines) + "\n"


def _unaugmented(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells without augmentation: the augmented ones have a plot of their own."""
    return [s for s in summaries if VARIANTS[s["variant"]]["augment.method"] == "none"]


def _colour(variant: str) -> str:
    """One colour per variant in every panel, so one legend is true for all of them (the
    unaugmented variants: ten colours for nine)."""
    unaugmented = [v for v, keys in VARIANTS.items() if keys["augment.method"] == "none"]
    return f"C{unaugmented.index(variant) % 10}"


def _epsilon_axis(ax: Any, epsilons: list[float]) -> None:
    """ε as evenly spaced categories, no DP last: a linear axis would put ∞ nowhere."""
    ax.set_xticks(range(len(epsilons)), [_eps_tick(e) for e in epsilons])
    ax.set_xlim(-0.4, len(epsilons) - 0.6)
    ax.set_xlabel("ε per client")


def _eps_tick(eps: float) -> str:
    return "no DP" if math.isinf(eps) else f"{eps:g}"


def _dodge(index: int, count: int) -> float:
    """A small x offset per line, so lines with equal values stay visible side by side."""
    return 0.05 * (index - (count - 1) / 2)


def plot_worst_group_vs_epsilon(summaries: list[dict[str, Any]], path: Path) -> None:
    groups = group_cells(_unaugmented(summaries))
    grids = sorted({g for g, _, _ in groups}) or ["(no unaugmented cells)"]
    epsilons = sorted({e for _, _, e in groups})
    shown = sorted({v for _, v, _ in groups}, key=list(VARIANTS).index)
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 4.6), squeeze=False)
    for ax, grid in zip(axes[0], grids, strict=True):
        for index, variant in enumerate(shown):
            xs, ys = _series(groups, grid, variant, "worst_group_accuracy", epsilons)
            dodge = _dodge(index, len(shown))
            ax.plot([x + dodge for x in xs], ys, marker="o", color=_colour(variant))
        ax.set_title(grid)
        _epsilon_axis(ax, epsilons)
        ax.set_ylabel("worst-group accuracy")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=_colour(v), marker="o") for v in shown]
    fig.legend(handles, shown, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def paired_with_fedavg(
    summaries: list[dict[str, Any]],
) -> list[tuple[Key, list[dict[str, Any]], list[dict[str, Any]]]]:
    """``(key, cells, fedavg cells)`` for every non-FedAvg (grid, variant, ε), both sides cut
    to the seeds both have: a seed changes the data, so unpaired means would be biased."""
    groups = group_cells(summaries)
    pairs: list[tuple[Key, list[dict[str, Any]], list[dict[str, Any]]]] = []
    for (grid, variant, eps), all_cells in sorted(groups.items()):
        base_cells = groups.get((grid, "fedavg", eps), [])
        seeds = {c["seed"] for c in all_cells} & {c["seed"] for c in base_cells}
        if variant != "fedavg" and seeds:
            pairs.append((
                (grid, variant, eps),
                [c for c in all_cells if c["seed"] in seeds],
                [c for c in base_cells if c["seed"] in seeds],
            ))  # fmt: skip
    return pairs


def _change(
    cells: list[dict[str, Any]],
    base: list[dict[str, Any]],
    value: Callable[[dict[str, Any]], float],
) -> float:
    """The change of the mean of ``value(cell)`` from ``base`` to ``cells``."""
    return mean(map(value, cells)) - mean(map(value, base))


def _paired_means(
    cells: list[dict[str, Any]], base: list[dict[str, Any]], metric: str
) -> tuple[float, float] | None:
    """Means of ``metric`` over the seeds both have (None where either lacks it)."""
    seeds = {c["seed"] for c in cells if c.get(metric) is not None}
    seeds &= {c["seed"] for c in base if c.get(metric) is not None}
    if not seeds:
        return None
    ours = mean(c[metric] for c in cells if c["seed"] in seeds)
    return ours, mean(c[metric] for c in base if c["seed"] in seeds)


def _relative_change(
    cells: list[dict[str, Any]], base: list[dict[str, Any]], metric: str
) -> float | None:
    """Relative change of the paired means of ``metric`` from ``base`` to ``cells`` (None
    where either side lacks it or ``base``'s mean is 0)."""
    means = _paired_means(cells, base, metric)
    return None if means is None or not means[1] else means[0] / means[1] - 1


def _signed(value: float, digits: int) -> str:
    """``value`` with its sign, where a value that rounds to zero reads +0, not -0."""
    return f"{round(value, digits) + 0.0:+.{digits}f}"


def _percent(change: float | None) -> str:
    return "–" if change is None else f"{_signed(100 * change, 0)} %"


def _gap_change(cells: list[dict[str, Any]], base: list[dict[str, Any]]) -> float:
    """Relative change of the mean gap (0 where FedAvg's is 0)."""
    return _relative_change(cells, base, "group_accuracy_gap") or 0.0


def gap_vs_cost(summaries: list[dict[str, Any]]) -> list[tuple[Key, float, float]]:
    """``((grid, variant, ε), accuracy cost in points, gap reduction in %)`` vs FedAvg at
    the same (data, ε), over the seeds both have."""
    return [
        (key, -100 * _change(cells, base, lambda c: c["accuracy"]),
         -100 * _gap_change(cells, base))
        for key, cells, base in paired_with_fedavg(summaries)
    ]  # fmt: skip


def _best_group(cell: dict[str, Any]) -> float:
    return float(cell["worst_group_accuracy"] + cell["group_accuracy_gap"])


# Accuracy moves smaller than half a point are not called a move of that end of the gap:
# the best group's accuracy shifts by a few thousandths between seeds of one setting.
UNMOVED = 0.005


def gap_moved_by(worst_change: float, best_change: float) -> str:
    """Which ends moved a gap (best − worst group) that closed or widened: a gap can close
    by making the best group worse, even with the worst group worse too, and the report must
    say so. "–": the gap moved by less than UNMOVED."""
    gap_change = best_change - worst_change
    if abs(gap_change) < UNMOVED:
        return "–"
    ends = {"worst": worst_change, "best": best_change}
    moved = [end for end, change in ends.items() if abs(change) >= UNMOVED]
    # neither end moved half a point, but the gap did: name the end that moved more
    moved = moved or [max(ends, key=lambda end: abs(ends[end]))]
    said = ", ".join(f"{end} group {'up' if ends[end] > 0 else 'down'}" for end in moved)
    return f"{'closed' if gap_change < 0 else 'widened'}: {said}"


def versus_fedavg_table(summaries: list[dict[str, Any]]) -> str:
    """Every variant against FedAvg at the same (data, ε), over the seeds both have: the
    change of the paired means of accuracy, the worst and the best group, and of the gap,
    and which end of the gap moved it (a gap can close by lowering the best group)."""
    header = ["data", "variant", "ε", "seeds", "Δ accuracy (points)", "Δ worst group",
              "Δ best group", "gap change", "how the gap moved"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (grid, variant, eps), cells, base in paired_with_fedavg(summaries):
        worst = _change(cells, base, lambda c: c["worst_group_accuracy"])
        best = _change(cells, base, _best_group)
        row = [grid, variant, "∞" if math.isinf(eps) else f"{eps:g}", str(len(cells)),
               _signed(100 * _change(cells, base, lambda c: c["accuracy"]), 1),
               _signed(worst, 3), _signed(best, 3),
               _percent(_gap_change(cells, base)), gap_moved_by(worst, best)]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _eps_label(eps: float) -> str:
    return "no DP" if math.isinf(eps) else f"ε = {eps:g}"


def plot_gap_vs_cost(summaries: list[dict[str, Any]], path: Path) -> None:
    """A panel per dataset; colour = variant (as in the worst-group plot), marker = ε.
    Legends, not labels on the points: those overlap."""
    points = gap_vs_cost(_unaugmented(summaries))
    grids = sorted({grid for (grid, _, _), _, _ in points}) or ["(no cells beside FedAvg)"]
    epsilons = sorted({eps for (_, _, eps), _, _ in points})
    marker = dict(zip(epsilons, cycle("osD^v<>p"), strict=False))
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 4.8), squeeze=False)
    for ax, grid in zip(axes[0], grids, strict=True):
        for (g, variant, eps), cost, reduction in points:
            if g == grid:
                ax.scatter(cost, reduction, s=30, color=_colour(variant), marker=marker[eps])
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(grid)
        ax.set_xlabel("population-accuracy cost vs FedAvg (points)")
        ax.set_ylabel("gap (max − min) reduction vs FedAvg (%)")
        ax.grid(alpha=0.3)
    shown = sorted({v for (_, v, _), _, _ in points}, key=list(VARIANTS).index)
    handles = [plt.Line2D([], [], color=_colour(v), marker="o", ls="") for v in shown]
    handles += [plt.Line2D([], [], color="black", marker=marker[e], ls="") for e in epsilons]
    labels = [*shown, *(_eps_label(e) for e in epsilons)]
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


AUGMENT_METHODS = ("none", "counterfactual", "synthesize")
AUGMENT_STYLE = {"none": "-", "counterfactual": "--", "synthesize": ":"}
AUGMENT_METRICS = ("accuracy", "worst_group_accuracy", "group_accuracy_gap",
                   "equalized_odds_difference", "counterfactual_flip_rate")  # fmt: skip


def _split_variant(variant: str) -> tuple[str, str]:
    """``"fedavg+counterfactual"`` → ``("fedavg", "counterfactual")``."""
    method = VARIANTS[variant]["augment.method"]
    return (variant.removesuffix(f"+{method}") if method != "none" else variant), method


def augmentation_table(summaries: list[dict[str, Any]]) -> str:
    """Each augmented variant against the same variant without augmentation, at the same
    (data, ε), over the seeds both have: means and the change of the paired means."""
    groups = group_cells(summaries)
    header = ["data", "variant", "ε", "seeds", *AUGMENT_METRICS, "Δ flip rate", "Δ worst",
              "Δ accuracy (points)"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (grid, variant, eps), cells in sorted(groups.items()):
        base_name, method = _split_variant(variant)
        base = groups.get((grid, base_name, eps), [])
        accuracy = _paired_means(cells, base, "accuracy")
        if method == "none" or accuracy is None:
            continue
        seeds = {c["seed"] for c in cells} & {c["seed"] for c in base}
        cells = [c for c in cells if c["seed"] in seeds]
        row = [grid, variant, "∞" if math.isinf(eps) else f"{eps:g}", str(len(seeds))]
        row += [_cell([c[m] for c in cells if c.get(m) is not None]) for m in AUGMENT_METRICS]
        row += [_percent(_relative_change(cells, base, "counterfactual_flip_rate")),
                _percent(_relative_change(cells, base, "worst_group_accuracy")),
                _signed(100 * (accuracy[0] - accuracy[1]), 1)]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def _series(
    groups: dict[Key, list[dict[str, Any]]],
    grid: str,
    variant: str,
    metric: str,
    epsilons: list[float],
) -> tuple[list[float], list[float]]:
    """(position of ε among ``epsilons``, mean of ``metric``) for one line of a panel."""
    points = sorted((e, c) for (g, v, e), c in groups.items() if g == grid and v == variant)
    values = [(e, [x[metric] for x in c if x.get(metric) is not None]) for e, c in points]
    kept = [(float(epsilons.index(e)), mean(v)) for e, v in values if v]
    return [x for x, _ in kept], [y for _, y in kept]


def plot_augmentation(summaries: list[dict[str, Any]], path: Path) -> bool:
    """Flip rate (where the data has counterfactual sets) and worst-group accuracy vs ε,
    one colour per base variant, one line style per augmentation method."""
    groups = group_cells(summaries)
    augmented = {(g, _split_variant(v)[0]) for g, v, _ in groups if _split_variant(v)[1] != "none"}
    if not augmented:
        return False
    grids = sorted({g for g, _ in augmented})
    bases = sorted({b for _, b in augmented}, key=list(VARIANTS).index)
    epsilons = sorted({e for _, _, e in groups})
    metrics = ("counterfactual_flip_rate", "worst_group_accuracy")
    lines = list(product(bases, AUGMENT_METHODS))
    fig, axes = plt.subplots(2, len(grids), figsize=(5 * len(grids), 7.5), squeeze=False)
    for column, grid in enumerate(grids):
        for row, metric in enumerate(metrics):
            ax = axes[row][column]
            for index, (base, method) in enumerate(lines):
                name = base if method == "none" else f"{base}+{method}"
                xs, ys = _series(groups, grid, name, metric, epsilons)
                dodge = _dodge(index, len(lines))
                if xs:
                    ax.plot([x + dodge for x in xs], ys, marker="o", color=_colour(base),
                            ls=AUGMENT_STYLE[method])  # fmt: skip
            label = metric.replace("_", " ")
            if not ax.lines:
                ax.axis("off")
                ax.text(0.5, 0.5, f"{grid}: no {label}\n(the data has no counterfactual sets)",
                        ha="center", va="center", transform=ax.transAxes)  # fmt: skip
                continue
            ax.set_title(f"{grid}: {label}", fontsize=9)
            _epsilon_axis(ax, epsilons)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=_colour(b), marker="o") for b in bases]
    handles += [plt.Line2D([], [], color="k", ls=AUGMENT_STYLE[m]) for m in AUGMENT_METHODS]
    labels = [*bases, *(f"augment: {m}" for m in AUGMENT_METHODS)]
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def coverage_line(coverage: dict[str, tuple[int, int, int]]) -> str:
    """``grid: done of designed cells`` (and how many can never run), so a partial sweep
    says so."""
    parts = [
        f"{name} {done} of {designed}" + (f" ({impossible} cannot run)" if impossible else "")
        for name, (done, designed, impossible) in sorted(coverage.items())
    ]
    return "Cells run of the designed grid: " + "; ".join(parts) + ".\n\n" if parts else ""


def engines_line(summaries: list[dict[str, Any]]) -> str:
    """How the cells ran: ``flwr run`` each, or the in-process engine (same results)."""
    in_process = sum(s.get("engine") == "in-process" for s in summaries)
    if not in_process:
        return "each cell is a real `flwr run`"
    return (
        f"{len(summaries) - in_process} cells ran as a real `flwr run`, {in_process} with the "
        "in-process engine (`--in-process`: the same ServerApp and ClientApp in one process, "
        "which a seeded test shows gives `flwr run`'s metrics exactly)"
    )


def reproduce_block(commands: list[str]) -> str:
    """How to rerun the reported cells (already stored ones are not run again)."""
    if not commands:
        return ""
    lines = "\n".join(commands)
    return (
        "Reproduce, from the repository root (a fresh `outputs/` runs every cell):\n\n"
        f"```\n{lines}\n```\n\n"
    )


def write_report(
    summaries: list[dict[str, Any]],
    docs: Path,
    coverage: dict[str, tuple[int, int, int]] | None = None,
    commands: list[str] | None = None,
) -> Path:
    if not group_cells(summaries):  # before anything in ``docs`` is touched
        raise ValueError("no finished main-grid cell to report yet: run the sweep first")
    docs.mkdir(parents=True, exist_ok=True)
    plot_worst_group_vs_epsilon(summaries, docs / "evidence_worst_group_vs_epsilon.png")
    plot_gap_vs_cost(summaries, docs / "evidence_gap_vs_cost.png")
    augmented = plot_augmentation(summaries, docs / "evidence_augmentation.png")
    wall = sum(s["wall_s"] for s in summaries)
    skew = skew_table(summaries)
    augment = augmentation_table(summaries)
    versus = versus_fedavg_table(summaries)
    text = (
        "# Evidence\n\nGenerated by `python -m simulations evidence` (`--docs docs` writes it "
        f"here); {engines_line(summaries)}; metrics after the final round of the reported "
        "model (the moving average of the aggregates, `ema-decay`) on the global test set, "
        "mean ± sample std "
        f"(n − 1) over seeds. {len(summaries)} runs, {wall / 60:.0f} min of round wall time "
        "summed over the runs (`--jobs` runs some at once). A cell is run again when the run "
        "config it resolves to changes; a change of code is not detected (delete the cells it "
        "affects under `outputs/evidence/cells/`).\n\n"
        + reproduce_block(commands or [])
        + coverage_line(coverage or {})
        + markdown_table(summaries)
        + "\n![worst-group accuracy vs ε](evidence_worst_group_vs_epsilon.png)\n"
        + "\n![gap reduction vs accuracy cost](evidence_gap_vs_cost.png)\n"
        + (
            "\n## Against FedAvg\n\nEach variant against FedAvg at the same data and ε, over "
            "the seeds both have (Δ: change of the seed-paired means; the best group is worst "
            f"+ gap; a group's accuracy moving less than {UNMOVED} does not count as a move)."
            "\n\n" + versus
            if versus
            else ""
        )
        + ("\n## Partition skew\n\n" + skew if skew else "")
        + (
            "\n## Augmentation\n\nEach augmented variant against the same variant without "
            "augmentation (same data, ε and seeds; Δ: change of the seed-paired means). "
            "Methods and their privacy argument: [augmentation.md](augmentation.md).\n\n"
            + augment
            + ("\n![augmentation vs none](evidence_augmentation.png)\n" if augmented else "")
            if augment
            else ""
        )
    )
    path = docs / "evidence.md"
    path.write_text(text)
    return path
