"""The comparison chart: per metric both sides' means and the paired difference, the flag counts, and
the knowledge check's accuracy per group."""

from __future__ import annotations

from pathlib import Path

from ..core.charts import pyplot, save_png
from .report import Aggregate


def plot_aggregate(path: Path, aggregate: Aggregate) -> None:
    """One panel per metric: both sides' means, the better direction, and the paired difference
    with its 95% interval (a batch figure's without); a last panel counts the flagged answers per side."""
    plt = pyplot()
    shown = [m for m in aggregate.metrics.values() if m.base.n]
    knowledge = aggregate.knowledge
    cols = 4
    rows = -(-(len(shown) + 1 + (knowledge is not None)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.7 * rows), squeeze=False)
    colours = ["#9aa5b1", "#2f7ed8"]
    for ax, m in zip(axes.flat, shown):
        ax.bar(["base", "tuned"], [m.base.mean or 0, m.tuned.mean or 0], color=colours)
        direction = f" ({m.better} is better)" if m.better else ""
        interval = "" if m.difference is None else f"\nΔ {m.difference_text()}"  # as the tables write it
        ax.set_title(f"{m.label}{direction}{interval}", fontsize=8)
        ax.tick_params(labelsize=8)
    ax = axes.flat[len(shown)]
    flags = aggregate.flags
    names = list(flags.base)
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [flags.base[f] for f in names], width=0.4, color=colours[0], label="base")
    ax.bar([i + 0.2 for i in x], [flags.tuned[f] for f in names], width=0.4, color=colours[1], label="tuned")
    ax.set_xticks(list(x), [f.replace("-", "-\n") for f in names], fontsize=7)
    ax.set_title(f"flagged answers (of {aggregate.prompts})", fontsize=8)
    ax.legend(fontsize=7)
    used = len(shown) + 1
    if knowledge is not None:
        ax = axes.flat[used]
        used += 1
        x = range(len(knowledge.groups))
        for offset, side, colour in ((-0.2, "base", colours[0]), (0.2, "tuned", colours[1])):
            ax.bar([i + offset for i in x], [getattr(g, side) for g in knowledge.groups], width=0.4, color=colour,
                   label=side)
        for i, g in zip(x, knowledge.groups):
            ax.hlines(g.chance, i - 0.45, i + 0.45, colors="#d64545", linestyles="dashed",
                      label="chance" if i == 0 else None)
        ax.set_xticks(list(x), [f"{g.name} ({g.n})\nΔ {g.difference_text()}" for g in knowledge.groups], fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title("exam accuracy (%) by group", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[used:]:
        ax.axis("off")
    batch = any(m.difference is not None and m.difference.batch for m in shown)
    fig.suptitle("base vs fine-tuned: means over prompts, Δ = tuned − base with its 95% bootstrap interval"
                 + ("; timing: batch figures, without one" if batch else ""), fontsize=10)
    fig.tight_layout()
    save_png(fig, path, 110)
