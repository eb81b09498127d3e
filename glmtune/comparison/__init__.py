"""Stage 4, comparison: base and fine-tuned answers generated, scored, judged, reported; and the chat."""
