"""Stage 1, data: files in every format read into examples (question, answer, history), the data report, the eval split."""
