"""Stage 3, training: the run folder, memory fitting, the chunked loss, compiled layers, the Trainer, and the job that ties them."""
