"""The HF Trainer as this job runs it: length-grouped, reproducible batches, the loss chunked over
the vocabulary, the per-micro-batch checkpoint plan, micro-batches that ran out of memory redone,
a NaN guard, and a Ctrl-C that stops at a clean checkpoint."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from ..core import device, distributed
from ..core.config import TrainConfig
from ..core.errors import TrainingError
from .loss import chunked_loss
from .memory import GradientSnapshot, decoder_layers, split_rows
from .runs import stamp


def training_arguments(config: TrainConfig, micro: int, accum: int, precision: str,
                       has_eval: bool) -> TrainingArguments:
    every = config.eval_steps
    return TrainingArguments(**{
        "output_dir": str(config.output_dir), "num_train_epochs": config.epochs, "max_steps": config.max_steps,
        "per_device_train_batch_size": micro, "per_device_eval_batch_size": micro,
        "gradient_accumulation_steps": accum, "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler, "warmup_steps": config.warmup_ratio,
        "weight_decay": config.weight_decay, "max_grad_norm": config.max_grad_norm,
        "bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not device.cuda(),
        "eval_strategy": ("steps" if every else "epoch") if has_eval else "no", "eval_steps": every,
        "save_strategy": "steps", "save_steps": config.save_steps, "save_total_limit": config.save_total_limit or None,
        "logging_steps": config.logging_steps, "logging_nan_inf_filter": False,
        "report_to": config.reporters() or "none",  # TensorBoard writes to OUTPUT_DIR/runs/
        "seed": config.seed, "data_seed": config.seed, "remove_unused_columns": False,
        "dataloader_pin_memory": device.cuda(), "optim": "adamw_torch_fused",
        # Every LoRA weight takes part in every step. Left unset, DDP would walk the autograd graph
        # after each backward looking for unused ones (the Trainer assumes so for a PeftModel).
        "ddp_find_unused_parameters": False,
    })


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """Length grouping whose shuffle is seeded per epoch. The Trainer's own sampler draws from the
    global RNG, so a run resumed from a checkpoint shuffled every later epoch differently."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class GroupedTrainer(Trainer):
    """The HF Trainer with rows of similar length batched together (little padding), reproducibly;
    given a `CheckpointPlan`, only as much activation checkpointing as each micro-batch needs; and a
    micro-batch that runs out of GPU memory redone with more checkpointing or in halves."""

    def __init__(self, *args, checkpoint_plan=None, compiled: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint_plan, self.compiled = checkpoint_plan, compiled
        # Found once: walking every module of a 6B model on each micro-batch is wasted time.
        self.decoder_layers = decoder_layers(self.model)
        # With several processes a micro-batch cannot be redone by one of them alone (the others
        # already wait for its gradients), so none keeps a snapshot to redo it from; the plan they
        # share leaves the margin instead.
        self.snapshot = GradientSnapshot(self.model) if distributed.world_size() == 1 else None
        self.max_rows = float("inf")  # rows per micro-batch, lowered when one ran out of memory
        if self.pop_callback(ProgressCallback):  # the same bars, with a line per log instead of a dict
            self.add_callback(LossLines)
        self.memory_events: list[str] = []  # each recovery, as said on the console

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with chunked_loss(self.model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        rows = len(inputs["input_ids"])
        if rows > self.max_rows:
            # The loss is summed over tokens and divided by the count over the whole accumulated
            # batch (num_items_in_batch), so the parts' losses add up to the micro-batch's exactly.
            return sum(self.training_step(model, part, num_items_in_batch)
                       for part in split_rows(inputs, self.max_rows))
        tokens = inputs["input_ids"].numel()
        if self.snapshot is not None:
            self.snapshot.take()
        rng = torch.get_rng_state(), torch.cuda.get_rng_state() if device.cuda() else None
        while True:
            count = self.checkpoint_plan.apply(self.decoder_layers, tokens) if self.checkpoint_plan else None
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            except torch.OutOfMemoryError:
                pass  # handled below, once the traceback (holding the step's tensors) is gone
            if self.snapshot is None:
                raise self._cannot_redo(tokens, rows, count)
            self.snapshot.restore()  # the same gradients and dropout masks as before the attempt
            torch.set_rng_state(rng[0])
            if rng[1] is not None:
                torch.cuda.set_rng_state(rng[1])
            device.empty_cache()
            self._make_room(tokens, rows, count)
            if rows > self.max_rows:
                return self.training_step(model, inputs, num_items_in_batch)

    def _cannot_redo(self, tokens: int, rows: int, count: int | None) -> TrainingError:
        checkpointed = "" if count is None else f" with {count} of {self.checkpoint_plan.layers} layers checkpointed"
        return TrainingError(
            f"process {distributed.rank()} ran out of GPU memory on a micro-batch of {rows} row{'s' * (rows > 1)} "
            f"({tokens} tokens){checkpointed}; with several processes it cannot be redone alone. Run the same "
            "command with --resume and --gpu-memory a few GiB below this GPU's free memory (or --batch-size 1 "
            "--gradient-checkpointing on, the least memory); it continues from the last checkpoint")

    def _make_room(self, tokens: int, rows: int, count: int | None) -> None:
        """After an out-of-memory micro-batch: checkpoint more layers, else use fewer rows per
        micro-batch from now on; say which. TrainingError when neither is left."""
        plan = self.checkpoint_plan
        gpu = f"out of GPU memory on a micro-batch of {rows} row{'s' * (rows > 1)} ({tokens} tokens)"
        if plan is not None and count < plan.layers:
            more = plan.after_out_of_memory(tokens, count)
            event = (f"{gpu} with {count} of {plan.layers} layers checkpointed; redoing it with {more} (and "
                     "checkpointing more from now on)")
        elif rows > 1:
            self.max_rows = -(-rows // 2)
            event = (f"{gpu}; redoing it as micro-batches of at most {self.max_rows} rows from now on (the effective "
                     "batch stays the same)")
        else:
            free = f"nvidia-smi lists what else runs on it; {device.free_memory() / 2**30:.1f} GiB free now"
            if all(layer.gradient_checkpointing for layer in self.decoder_layers):
                advice = f"{gpu} even with every layer checkpointed. Lower --max-length, or free the GPU ({free})"
            else:
                advice = (f"{gpu}. Use --gradient-checkpointing on (or auto), lower --max-length, or free the GPU "
                          f"({free})")
            raise TrainingError(f"{advice}. --resume continues from the last checkpoint")
        self.memory_events.append(event)
        tqdm.write(event, file=sys.stderr)

    def evaluate(self, *args, **kwargs):
        # Creating the eval DataLoader draws from the global RNG. An evaluation that runs after a
        # checkpoint would then shift every later dropout mask, and a run resumed from that
        # checkpoint would train differently from an uninterrupted one.
        # Compiled layers would compile again for evaluation (no gradients, no dropout): not worth it
        # for a few batches.
        stance = torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), stance:
            return super().evaluate(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # One group per optimizer step of all processes: each takes every N-th micro-batch of it.
        group = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        self.sampler = SeededLengthGroupedSampler(group, dataset["length"], self.args.data_seed or self.args.seed)
        return self.sampler

    def _run_epoch(self, *args, epoch, **kwargs):
        # The Trainer's set_epoch reaches the sampler through accelerate's wrappers except in a
        # resumed epoch with several processes (one wrapper more), which would then replay epoch
        # 0's shuffle.
        self.sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)


class StopOnNonFiniteLoss(TrainerCallback):
    """Stops at the first NaN/inf training loss instead of burning GPU hours on garbage."""

    def __init__(self):
        self.bad_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.bad_step = state.global_step
            control.should_training_stop = True


class LossLines(ProgressCallback):
    """The Trainer's progress bars, with each log written as one line a person reads
    (`step 40  loss 2.3456  lr 9.80e-05  grad norm 1.23`, `step 40  eval loss 2.3012`) instead of the
    Python dict of every logged number; the run's totals are the final summary's, not a dict here."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and self.training_bar is not None and logs):
            return
        if "loss" in logs:
            parts = [f"loss {logs['loss']:.4f}"]
            if "learning_rate" in logs:
                parts.append(f"lr {logs['learning_rate']:.2e}")
            if logs.get("grad_norm") is not None:
                parts.append(f"grad norm {logs['grad_norm']:.3g}")
        elif "eval_loss" in logs:
            parts = [f"eval loss {logs['eval_loss']:.4f}"]
        else:
            return
        self.training_bar.write(f"step {state.global_step:>5}  " + "  ".join(parts))


class LogTheLastStep(TrainerCallback):
    """Logs the training loss at the final step too. The Trainer logs every --logging-steps steps
    only, so a run shorter than that (4 steps under the default 5) logged no loss at all, and any
    other run left its last steps out of the log, the loss plot and the NaN guard."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True


class StampCheckpoints(TrainerCallback):
    """Writes into each checkpoint which run it belongs to, so that `--resume PATH` can refuse a
    checkpoint of another run (whose weights would load, or break, under this run's name)."""

    def __init__(self, record):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            stamp(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.record)


class StopOnInterrupt(TrainerCallback):
    """The first Ctrl-C (or SIGTERM, which Slurm, `docker stop` and `kill` send before they kill)
    lets the current optimizer step finish, saves a checkpoint and stops, so --resume continues
    exactly there, with no evaluation on the way out; a second one stops at once (nothing
    half-written is used: an incomplete checkpoint is never resumed from)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # Where torchrun's workers share its terminal, one Ctrl-C reaches them twice, from the terminal
    # and passed on by torchrun, within milliseconds: that is not a second press.
    SAME_PRESS_S = 1.0

    def __init__(self):
        self.stopped_at: int | None = None
        self._requested: float | None = None  # when the first signal came
        self._previous: dict = {}

    def request(self, *_) -> None:
        if self._requested is not None:
            if time.monotonic() - self._requested < self.SAME_PRESS_S:
                return
            raise KeyboardInterrupt
        self._requested = time.monotonic()
        if distributed.is_main():  # every process got the signal; one line says what happens
            print("\nstopping after this step and saving a checkpoint (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self.request) for sig in self.SIGNALS}

    def on_step_end(self, args, state, control, **kwargs):
        # Every process stops after the same step, whichever of them the signal reached: one that
        # went on alone would wait forever for the others' gradients.
        if distributed.any_process(self._requested is not None):
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # a step that was due for one: the user asked to stop
            self.stopped_at = state.global_step

    def on_epoch_end(self, args, state, control, **kwargs):
        # Stopping ends the epoch early, and the Trainer evaluates at each epoch's end (the default
        # without --eval-steps): minutes of work the user did not wait for.
        if self.stopped_at is not None:
            control.should_evaluate = False

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        """The signals back to what they were; also called when training ends in an error (no
        on_train_end)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
