"""Figures written as PNG files: matplotlib without a display, and an atomic save."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path, dpi: int) -> None:
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
