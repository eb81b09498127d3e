"""`python -m glmtune.export`: `glmtune export` under its original name."""

from ..__main__ import run_command

if __name__ == "__main__":
    run_command("export", prog="python -m glmtune.export")
