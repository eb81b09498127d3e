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
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path, 120)


def plot_aggregate(path: Path, aggregate: dict, metrics: list[tuple], sides: tuple[str, str]) -> None:
    plt = _pyplot()
    shown = [(key, label) for key, label, _ in metrics if aggregate[sides[0]][key]["n"]]
    shown += [("distinct1", "distinct-1"), ("distinct2", "distinct-2")]
    cols = 4
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows))
    for ax, (key, label) in zip(axes.flat, shown):
        values = [aggregate[side][key]["mean"] if isinstance(aggregate[side][key], dict) else aggregate[side][key]
                  for side in sides]
        ax.bar(sides, [v or 0 for v in values], color=["#9aa5b1", "#2f7ed8"])
        ax.set_title(label, fontsize=9)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("base vs fine-tuned (means over prompts)")
    fig.tight_layout()
    _save(fig, path, 110)
