"""Stage 5, export: a run's adapter merged into a 16-bit model in the native or the original layout,
or into one GGUF file for llama.cpp and Ollama.

`glmtune export` (or `python -m glmtune.export`) runs it; `glmtune/export/job.py` says how."""
