"""The QLoRA training job, in named stages: prepare the output folder → data → tokenizer → model →
train → save. `glmtune train` (`chatglm_finetuning.py`) runs the stages one by one; `train(config)` runs them all.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ..core import device, distributed
from ..core.cli import RunOptions
from ..core.config import TrainConfig
from ..data.reading import TRAIN_PROMPTS, read_dataset, split_eval, write_examples, write_prompt_digests
from ..core.errors import ConfigError, DataError, Diverged, Interrupted, TrainingError
from ..model.sources import needs_gpu, resolve_model_dir
from ..model.lora import attach_lora, check_rank, count_parameters, resolve_lora_targets
from .memory import describe, fit_memory, strictest, uses_checkpointing
from ..model.prompts import PadCollator, tokenize_examples
from ..core.terminal import command
from ..core.files import free_space, write_atomic, write_failure
from ..core.folders import claim
from .runs import (FINISHED, RUN_CONFIG, RunRecord, clear_leftovers, file_sha256, last_checkpoint,
                   prepare_output_dir, trainer_state)


def resolve_prompt_format(choice: str, conversational: bool) -> str:
    if conversational and choice == "glm3":
        raise ConfigError("prompt_format", "glm3 has no system prompt or earlier turns, and this data has "
                                           "conversations; use chat (or auto)")
    if choice == "auto":
        return "chat" if conversational else "glm3"
    return choice


def check_hardware(config: TrainConfig) -> None:
    """What only the machine can tell: a GPU for a 6B model, and the precision it supports."""
    problem = device.check_precision(config.precision)
    if problem:
        raise ConfigError("precision", problem)
    if not device.cuda() and needs_gpu(config.model):
        raise ConfigError("model", f"{config.model} is a 6B-parameter model that needs a CUDA GPU, and none was "
                                   "found. For a CPU demo run: --model tiny")


def check_lora(config: TrainConfig) -> None:
    """The LoRA rank against the base's layer sizes (its config.json) and the memory free now,
    before any weight loads."""
    from ..model.loading import read_config

    available = device.free_memory()
    if device.cuda() and config.gpu_memory:
        available = min(available, int(config.gpu_memory * 2**30))
    check_rank(config.lora_r, resolve_lora_targets(config.lora_target),
               read_config(resolve_model_dir(config.model, weights=False)), available)


class FineTune:
    """One training run. Each stage leaves its results as attributes for the next. Used as a
    context manager: on leaving, the output folder is free for other processes again."""

    def __init__(self, config: TrainConfig, config_file: Path | None = None):
        self.config, self.out = config, config.output_dir
        self.record = RunRecord(config, "", config_file=str(config_file) if config_file else None)
        self.callbacks: list = []  # extra TrainerCallbacks (tests, benchmarks)
        self.claim = None  # the lock on the output folder, held by rank 0 until the run ends

    def prepare(self) -> None:
        """Check the machine, the data and the model's tokenizer files, then make the output folder
        ready: a new run, the continuation of an interrupted one, or a refusal that says what to do."""
        from ..model.tokenizer import tokenizer_folder

        distributed.start()
        check_hardware(self.config)
        # Bad data or a model folder without its tokenizer must fail before the folder is touched:
        # --overwrite would otherwise have removed a finished run for nothing.
        self.dataset = read_dataset(self.config.data)
        self.record.resolved.prompt_format = resolve_prompt_format(self.config.prompt_format,
                                                                   self.dataset.conversational)
        tokenizer_folder(self.config.model)
        check_lora(self.config)
        self.record.data_sha256 = file_sha256(self.config.data)
        self.resume_from, self.removed = distributed.on_main(self._claim_output_dir)

    def _claim_output_dir(self) -> tuple[Path | None, list[str]]:
        self.claim = claim(self.out, "training")
        try:
            resume_from, done = prepare_output_dir(self.record)
        except BaseException:
            self.claim.abandon()
            raise
        done += clear_leftovers(self.out)
        self.record.files += [RUN_CONFIG, *(["runs"] if "tensorboard" in self.config.reporters() else [])]
        self.record.save(self.out)  # first of all, so an interrupted run is always recognised
        return resume_from, done

    def __enter__(self) -> FineTune:
        return self

    def __exit__(self, *exc) -> None:
        if self.claim is not None:
            self.claim.release()

    def load_data(self) -> None:
        """The data report and the eval split, held out and saved (the data was read and checked in
        prepare)."""
        self.report = self.dataset.report_lines()
        self.train_examples, self.eval_examples = split_eval(self.dataset.examples, self.config.eval_ratio,
                                                             self.config.seed)
        self.record.resolved.eval_file = distributed.on_main(self._write_data_files)

    def _write_data_files(self) -> str:
        # Listed before they are written, so that a kill in between leaves nothing --overwrite
        # would take for a user's file; the eval split's name depends on its examples.
        self.record.files += ["data_report.txt", "skipped_lines.txt", TRAIN_PROMPTS, "eval.txt", "eval.jsonl"]
        self.record.save(self.out)
        write_atomic(self.out / "data_report.txt", "\n".join(self.report) + "\n")
        if self.dataset.skipped or self.dataset.duplicates:
            write_atomic(self.out / "skipped_lines.txt", self.dataset.skipped_report())
        write_prompt_digests(self.train_examples, self.out)
        written = write_examples(self.eval_examples, self.out).name
        unwritten = {"eval.txt", "eval.jsonl"} - {written}
        if not (self.dataset.skipped or self.dataset.duplicates):
            unwritten.add("skipped_lines.txt")
        self.record.files = [n for n in self.record.files if n not in unwritten]  # saved with the next record
        return written

    def load_tokenizer(self) -> None:
        """The tokenizer, and the examples as token ids and labels."""
        from ..model.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(self.config.model)
        c, fmt = self.config, self.record.resolved.prompt_format
        self.train_ds, self.stats = tokenize_examples(self.train_examples, self.tokenizer, fmt, c.max_length,
                                                      c.train_on_prompt)
        if not len(self.train_ds):
            raise DataError(f"{c.data}: no training row keeps an answer token within --max-length {c.max_length} "
                            f"({self.stats.where_and_fix()})")
        self.eval_ds, eval_stats = tokenize_examples(self.eval_examples, self.tokenizer, fmt, c.max_length,
                                                     c.train_on_prompt)
        self.report += self.stats.lines()
        if eval_stats.unanswered:
            self.report.append("eval split left out, no answer token within --max-length: "
                               + eval_stats.where_and_fix())
        distributed.on_main(lambda: write_atomic(self.out / "data_report.txt", "\n".join(self.report) + "\n"))

    def build_model(self) -> None:
        """The base (NF4 unless told otherwise) with LoRA adapters, and the batch that fits memory."""
        from transformers import set_seed

        from .compiling import compile_decoder_layers, plan_training_compile

        c, resolved = self.config, self.record.resolved
        set_seed(c.seed)
        device.limit_memory(c.gpu_memory)
        resolved.precision = device.resolve_precision(c.precision)
        resolved.lora_targets = resolve_lora_targets(c.lora_target)
        self.model = build_peft_model(c)
        self.collator = PadCollator(self.tokenizer.pad_token_id)
        processes = distributed.world_size()
        # --batch-size auto keeps the effective batch at --grad-accum however many processes share
        # it (validated to divide); a given micro-batch is per process, as in the HF Trainer.
        accum = c.grad_accum // processes if c.batch_size == "auto" else c.grad_accum
        micro, accum, plan = fit_memory(self.model, self.train_ds, self.collator, c.batch_size, accum,
                                        c.gradient_checkpointing)
        rows = micro * accum  # per process and optimizer step
        # Every process must take the same micro-batches and checkpoint alike: the strictest fit wins.
        fits = distributed.gather((micro, plan))
        micro = min(m for m, _ in fits)  # a divisor of rows, as every candidate is
        accum = rows // micro
        self.plan = strictest([p for _, p in fits])
        resolved.micro_batch, resolved.grad_accum, resolved.processes = micro, accum, processes
        resolved.effective_batch = micro * accum * processes
        resolved.checkpointing = describe(c.gradient_checkpointing, self.plan)
        self.compiling = plan_training_compile(c.compile, self.tokens_to_train() / processes, c.model,
                                               device.cuda(), c.gradient_checkpointing)
        resolved.compile = self.compiling.reason
        if self.compiling.on:  # after the memory probes: they measure eager memory, which compiling only lowers
            compile_decoder_layers(self.model)
        resolved.examples = {"train": len(self.train_ds), "eval": len(self.eval_ds)}
        resolved.tokens = asdict(self.stats)
        distributed.on_main(lambda: self.record.save(self.out))

    def tokens_to_train(self) -> float:
        """Tokens the run will train on (padding aside), for weighing the compile cost."""
        lengths, c = self.train_ds["length"], self.config
        if c.max_steps > 0:
            return c.max_steps * self.record.resolved.effective_batch * sum(lengths) / max(1, len(lengths))
        return c.epochs * sum(lengths)

    def plan_summary(self) -> str:
        """The one screen printed before training: what will run, on what, into where."""
        c, r, d = self.config, self.record.resolved, self.dataset
        trainable, total = count_parameters(self.model)
        memory = f"; {device.allocated() / 2**30:.1f} GiB allocated after loading" if device.cuda() else ""
        resumed = f"; resuming from {self.resume_from.name}" if self.resume_from else ""
        if self.removed:
            resumed += f" ({'; '.join(self.removed)})"
        lines = [
            f"data       {c.data}: {len(d.examples)} examples used of {d.lines_read} lines read "
            f"({len(d.skipped)} skipped, {d.duplicates_removed} duplicates, {d.repaired} repaired)",
            f"split      {len(self.train_examples)} train / {len(self.eval_examples)} eval (seed {c.seed}); "
            f"prompt layout {r.prompt_format}",
            f"tokens     {'; '.join(self.stats.lines())}",
            f"model      {c.model} ({c.quantization}, {r.precision}); LoRA r={c.lora_r} alpha={c.lora_alpha} "
            f"on {', '.join(r.lora_targets)}",
            f"params     {trainable:,} trainable of {total:,} ({100 * trainable / total:.2f}%)",
            f"batch      {batch_product(r)} = effective {r.effective_batch}; length-grouped, dynamic padding",
            f"memory     activation checkpointing {r.checkpointing}{least_memory_hint()}",
            f"compile    {r.compile}",
            f"device     {f'{r.processes} x ' if r.processes > 1 else ''}{device.name()}{memory}",
            f"output     {self.out}{resumed}",
        ]
        return "\n".join(["=" * 80, *lines, "=" * 80])

    def train(self) -> None:
        """Run the Trainer. Ctrl-C saves a checkpoint and raises Interrupted; a NaN loss raises
        Diverged; neither leaves a final adapter behind."""
        from .compiling import compile_seconds, record_compile_cost
        from .trainer import (GroupedTrainer, StampCheckpoints, StopOnInterrupt, StopOnNonFiniteLoss,
                              training_arguments)

        r = self.record.resolved
        self.nan_guard, self.interrupt = StopOnNonFiniteLoss(), StopOnInterrupt()
        args = training_arguments(self.config, r.micro_batch, r.grad_accum, r.precision, len(self.eval_ds) > 0)
        self.trainer = GroupedTrainer(
            model=self.model, args=args, train_dataset=self.train_ds,
            eval_dataset=self.eval_ds if len(self.eval_ds) else None, data_collator=self.collator,
            callbacks=[self.nan_guard, self.interrupt, StampCheckpoints(self.record), *self.callbacks],
            checkpoint_plan=self.plan,
            compiled=self.compiling.on)
        device.reset_peak()  # the probes' peaks are not training's
        began, compiled_before = time.perf_counter(), compile_seconds()
        state = trainer_state(self.resume_from) if self.resume_from else {}  # complete: prepare checked it
        start_epoch = state.get("epoch") or 0.0
        if state and state["global_step"] >= state.get("max_steps", float("inf")):
            # The checkpoint of the run's final step: the run stopped during its final save.
            self._restore_last_checkpoint()
        else:
            try:
                with self._stop_on_write_failure("a checkpoint"):
                    self.result = self.trainer.train(
                        resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
            finally:
                self.interrupt.restore()
        self.train_seconds = time.perf_counter() - began
        self.compile_seconds = compile_seconds() - compiled_before if self.compiling.on else 0.0
        if self.compiling.on and device.cuda() and self.compile_seconds and distributed.is_main():
            record_compile_cost(self.compiling.key, self.compile_seconds)
        epochs_run = max(0.0, (self.trainer.state.epoch or 0.0) - start_epoch)
        self.tokens_per_s = epochs_run * sum(self.train_ds["length"]) / max(self.train_seconds, 1e-9)
        loss = self.result.training_loss
        diverged = (loss is not None and not math.isfinite(loss)) or not all(
            p.isfinite().all() for p in self.model.parameters() if p.requires_grad)
        diverged = distributed.any_process(diverged)  # each process's mean loss is its own: all stop, or none
        if self.nan_guard.bad_step is not None or diverged:
            # The guard sees logged losses only; a run shorter than --logging-steps, or whose last
            # update overflowed, shows in its mean loss or in the LoRA weights themselves.
            raise diverged_error(f"the training loss became NaN/inf (by step "
                                 f"{self.nan_guard.bad_step or self.trainer.state.global_step})")
        if self.interrupt.stopped_at is not None:
            step = self.interrupt.stopped_at
            raise Interrupted(f"stopped at step {step}; checkpoint-{step} is saved in {self.out}. Continue with the "
                              "same command and --resume", checkpoint=str(self.out / f"checkpoint-{step}"))

    def save(self) -> None:
        """The adapter and tokenizer (moved into place whole), metrics, the loss plot, and the run
        record marked finished, last: a folder whose record says finished is complete. Every process
        evaluates its share; rank 0 writes."""
        metrics = dict(self.result.metrics)
        if len(self.eval_ds):
            metrics |= self.trainer.evaluate()
            if not math.isfinite(metrics["eval_loss"]):  # weights blown up by the last update
                raise diverged_error("the eval loss is NaN/inf")
        if self.plan is not None:
            metrics["checkpoint_plan"] = self.plan.summary()
        peaks = distributed.gather(device.peak_gib())
        metrics |= {"train_seconds": self.train_seconds, "train_tokens_per_s": self.tokens_per_s,
                    "processes": distributed.world_size(), "peak_gpu_gib": max(peaks) if device.cuda() else None,
                    "compile": {"chosen": self.record.resolved.compile, "compile_seconds": self.compile_seconds},
                    "out_of_memory_recoveries": self.trainer.memory_events,
                    "log_history": self.trainer.state.log_history}
        self.metrics = metrics
        distributed.on_main(self._write_outputs)

    def _write_outputs(self) -> None:
        from .plots import plot_losses

        with self._stop_on_write_failure("the adapter"), \
                tempfile.TemporaryDirectory(dir=self.out, prefix=".saving-") as scratch:
            self.model.save_pretrained(scratch)
            self.tokenizer.save_pretrained(scratch)
            saved = list(Path(scratch).iterdir())
            self.record.files += [item.name for item in saved] + ["train_metrics.json", "loss.png"]
            self.record.save(self.out)  # listed before they are in place (see _write_data_files)
            for item in saved:
                item.replace(self.out / item.name)
        write_atomic(self.out / "train_metrics.json", json.dumps(self.metrics, indent=2) + "\n")
        plot_losses(self.trainer.state.log_history, self.out / "loss.png")
        self.record.state = FINISHED
        self.record.seal(self.out)
        self.record.save(self.out)

    def _restore_last_checkpoint(self) -> None:
        """Training ended but its final save did not (a kill or a full disk): the adapter and state
        come from the last checkpoint. Resuming the Trainer there would take one step too many."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState
        from transformers.trainer_utils import TrainOutput

        checkpoint = self.resume_from
        set_peft_model_state_dict(self.model, load_file(checkpoint / "adapter_model.safetensors"))
        self.trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        losses = [h["loss"] for h in self.trainer.state.log_history if "loss" in h]
        # None when the run was shorter than --logging-steps: the weights and eval loss are checked instead
        self.result = TrainOutput(self.trainer.state.global_step, losses[-1] if losses else None, {})

    @contextlib.contextmanager
    def _stop_on_write_failure(self, what: str):
        """A full disk while writing `what`: drop the checkpoint it cut short (unusable, and it holds
        space), and say where --resume will continue."""
        try:
            yield
        except Exception as err:
            reason = write_failure(err)
            if reason is None:
                raise
            done = clear_leftovers(self.out)  # what the failed write cut short (and frees its space)
            last = last_checkpoint(self.out)
            where = f"from {last.name}" if last else "from step 0 (no checkpoint was complete)"
            removed = f"; {'; '.join(done)}" if done else ""
            raise TrainingError(f"could not write {what} in {self.out}: {reason} ({free_space(self.out)}){removed}. "
                                f"Free some space and run the same command with --resume; it continues {where}"
                                ) from err

    def final_summary(self) -> str:
        """What the user reads when training ends: losses, speed, where things are, what next."""
        history = self.trainer.state.log_history
        train_loss = next((h["loss"] for h in reversed(history) if "loss" in h), None)
        eval_loss = self.metrics.get("eval_loss")
        if train_loss is not None:
            losses = f"final train loss {train_loss:.4f}"
        else:  # fewer steps than --logging-steps: only the run's mean was recorded
            losses = f"mean train loss {self.metrics.get('train_loss', float('nan')):.4f}"
        if eval_loss is not None:
            losses += f", eval loss {eval_loss:.4f} on {len(self.eval_ds)} held-out examples"
        minutes, seconds = divmod(round(self.train_seconds), 60)
        processes = distributed.world_size()
        each = f" ({self.tokens_per_s / processes:,.0f} per process)" if processes > 1 else ""
        lines = [
            f"finished   {self.trainer.state.global_step} steps in {minutes} min {seconds} s, "
            f"{self.tokens_per_s:,.0f} tokens/s{each}",
            f"losses     {losses}",
            f"saved      {self.out}: adapter, tokenizer, run_config.json, {self.record.resolved.eval_file}, "
            "train_metrics.json, loss.png",
        ]
        if self.trainer.memory_events:
            lines.append(f"memory     {len(self.trainer.memory_events)} micro-batches ran out of GPU memory and were "
                         "redone (train_metrics.json lists them)")
        if self.config.reporters():
            lines.append(f"logs       {', '.join(self.config.reporters())}"
                         + (f" ({command('tensorboard', '--logdir', self.out / 'runs')})"
                            if "tensorboard" in self.config.reporters() else ""))
        launcher = ["torchrun", "--nproc_per_node", str(processes)] if processes > 1 else ["python"]
        lines.append(f"next       {command(*launcher, 'chatglm_finetuning_tst.py', '--adapter', self.out)}")
        return "\n".join(lines)


def batch_product(resolved) -> str:
    """How the effective batch is made: 'micro 4 x accum 2 x 2 processes'."""
    processes = f" x {resolved.processes} processes" if resolved.processes > 1 else ""
    return f"micro {resolved.micro_batch} x accum {resolved.grad_accum}{processes}"


def least_memory_hint() -> str:
    """On a small GPU, the flags that train in the least memory (slowest)."""
    if not device.cuda() or device.total_memory() >= device.SMALL_CARD:
        return ""
    return "; least memory (slowest): --batch-size 1 --gradient-checkpointing on"


def diverged_error(what: str) -> Diverged:
    return Diverged(f"{what}; no final adapter was saved. Lower --learning-rate (e.g. 5e-5), use --precision "
                         "bf16 instead of fp16 (fp16 overflows), or check the data report for broken lines")


def build_peft_model(config: TrainConfig):
    """The base model as training needs it (quantized, no KV cache, checkpointing installed where
    it may be used) with fresh LoRA adapters."""
    from ..model.loading import load_model

    model = load_model(config.model, quantization=None if config.quantization == "none" else "nf4",
                       dtype=device.dtype(config.precision))
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    if uses_checkpointing(config.gradient_checkpointing):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return attach_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout,
                       resolve_lora_targets(config.lora_target))


def train(config: TrainConfig, config_file: Path | None = None, callbacks: list | None = None) -> FineTune:
    """Run every stage of a training run; returns the finished job (its `model`, `metrics`, ...)."""
    with FineTune(config, config_file) as job:
        job.callbacks = list(callbacks or [])
        job.prepare()
        job.load_data()
        job.load_tokenizer()
        job.build_model()
        job.train()
        job.save()
    return job


def main(config: TrainConfig, options: RunOptions) -> None:
    """The training command's stages, in order (`chatglm_finetuning.py`, `glmtune train`)."""
    with FineTune(config, options.config_file) as job:  # holds the output folder until it is left
        job.prepare()         # machine, data, tokenizer files; then the output folder: new, resumed, or refused
        job.load_data()       # data report, eval split
        job.load_tokenizer()  # tokenizer -> token ids and labels
        job.build_model()     # NF4 base + LoRA, batch fitted to memory
        print(job.plan_summary(), flush=True)
        job.train()
        job.save()            # adapter, tokenizer, metrics, loss plot; the run marked finished
    print(job.final_summary())
