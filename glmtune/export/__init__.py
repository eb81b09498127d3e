"""Stage 5, export: a run's adapter merged into a 16-bit model in the native or the original layout.

`python -m glmtune.export` runs it (see `glmtune/export/job.py` for the commands)."""
