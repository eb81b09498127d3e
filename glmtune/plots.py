"""The charts: training and eval loss of a run, and the comparison's per-metric bars."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> None:
    """Render to a temporary file and rename, so a full disk never leaves a broken PNG."""
    scratch = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(scratch, dpi=dpi, format="png")
        scratch.replace(path)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        scratch.unlink(missing_ok=True)
        import matplotlib.pyplot as plt

        plt.close(fig)


def plot_losses(log_history: list[dict], path: Path) -> None:
    plt = _pyplot()
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), "." if len(train) == 1 else "-", label="train loss")  # one point draws no line
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    if train or evals:  # a run shorter than --logging-steps, without eval, logged no loss to label
        ax.legend()
    fig.tight_layout()
    _save(fig, path, 120)


def plot_aggregate(path: Path, aggregate: dict) -> None:
    """One panel per metric: both sides' means, the better direction, and the paired difference
    with its 95% interval; a last panel counts the flagged answers per side."""
    from .scoring import difference_text

    plt = _pyplot()
    shown = [(key, m) for key, m in aggregate["metrics"].items() if m["base"]["n"]]
    cols = 4
    rows = -(-(len(shown) + 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.7 * rows), squeeze=False)
    colours = ["#9aa5b1", "#2f7ed8"]
    for ax, (key, m) in zip(axes.flat, shown):
        ax.bar(["base", "tuned"], [m["base"]["mean"] or 0, m["tuned"]["mean"] or 0], color=colours)
        direction = f" ({m['better']} is better)" if m["better"] else ""
        interval = "" if m["difference"] is None else f"\nΔ {difference_text(m)}"  # as the tables write it
        ax.set_title(f"{m['label']}{direction}{interval}", fontsize=8)
        ax.tick_params(labelsize=8)
    ax = axes.flat[len(shown)]
    flags = aggregate["flags"]
    names = list(flags["base"])
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [flags["base"][f] for f in names], width=0.4, color=colours[0], label="base")
    ax.bar([i + 0.2 for i in x], [flags["tuned"][f] for f in names], width=0.4, color=colours[1], label="tuned")
    ax.set_xticks(list(x), [f.replace("-", "-\n") for f in names], fontsize=7)
    ax.set_title(f"flagged answers (of {aggregate['prompts']})", fontsize=8)
    ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(shown) + 1:]:
        ax.axis("off")
    fig.suptitle("base vs fine-tuned: means over prompts, Δ = tuned − base with its 95% bootstrap interval",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path, 110)
