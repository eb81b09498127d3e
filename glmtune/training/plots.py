"""The loss curve of a run: training and eval loss per optimizer step."""

from __future__ import annotations

from pathlib import Path

from ..core.charts import pyplot, save_png


def plot_losses(log_history: list[dict], path: Path) -> None:
    plt = pyplot()
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
    if train or evals:  # an earlier version's run shorter than --logging-steps logged no loss to label
        ax.legend()
    fig.tight_layout()
    save_png(fig, path, 120)
