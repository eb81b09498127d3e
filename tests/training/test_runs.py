"""The output folder across a run's life: new, interrupted (Ctrl-C, SIGTERM, kill or a full disk),
resumed, finished, damaged, or another run's; and what a run logs on the way."""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from glmtune.comparison.job import compare
from glmtune.core.errors import Interrupted, RunDirError, TrainingError
from glmtune.training.job import train
from glmtune.training.runs import RunRecord, checkpoints, last_checkpoint
from glmtune.training.trainer import StopOnInterrupt, training_arguments

from conftest import TORCH_FULL_DISK, KillAtStep, compare_config, copy_run, quick, tiny_config


FLAGS = ("--max-steps", "4", "--save-steps", "2", "--learning-rate", "5e-3")


class CtrlCAtStep(TrainerCallback):
    """Presses Ctrl-C (a real SIGINT to this process) during step `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class CountEvaluations(TrainerCallback):
    def __init__(self):
        self.count = 0

    def on_evaluate(self, args, state, control, **kwargs):
        self.count += 1


def test_ctrl_c_saves_a_checkpoint_and_rerun_asks_for_resume(data_file, tmp_path):
    out = tmp_path / "run"
    users = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    evaluations = CountEvaluations()
    with pytest.raises(Interrupted, match="stopped at step 1; checkpoint-1 is saved.*--resume") as stopped:
        train(tiny_config(data_file, out, *FLAGS), callbacks=[CtrlCAtStep(1), evaluations])
    # Stopping ends the epoch early, and the run evaluates at each epoch's end: not on the way out
    assert evaluations.count == 0
    assert stopped.value.checkpoint == str(out / "checkpoint-1")
    assert last_checkpoint(out) == out / "checkpoint-1"
    assert not (out / "adapter_model.safetensors").exists()  # no final adapter from an unfinished run
    assert RunRecord.load(out).state == "running"
    assert signal.getsignal(signal.SIGINT) is users  # Ctrl-C is the user's again

    with pytest.raises(RunDirError, match="interrupted at checkpoint-1. Continue it with --resume"):
        train(tiny_config(data_file, out, *FLAGS))
    job = train(tiny_config(data_file, out, *FLAGS, "--resume"))
    assert job.trainer.state.global_step == 4 and RunRecord.load(out).state == "finished"
    with pytest.raises(RunDirError, match="holds this run, finished"):
        train(tiny_config(data_file, out, *FLAGS, "--resume"))
    with pytest.raises(RunDirError, match="holds this run, finished.*--overwrite"):
        train(tiny_config(data_file, out, *FLAGS))


def test_a_different_run_or_data_is_never_touched(data_file, trained, tmp_path):
    out, _ = trained
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match=r"another run \(lora_r 16 -> 8"):
        train(tiny_config(data_file, out, "--learning-rate", "5e-3", "--max-steps", "12", "--lora-r", "8"))
    changed = tmp_path / data_file.name
    changed.write_text(data_file.read_text(encoding="utf-8") + "新问题？ 描述,回答。\n", encoding="utf-8")
    with pytest.raises(RunDirError, match="data file's contents changed"):
        train(tiny_config(changed, out, "--learning-rate", "5e-3", "--max-steps", "12"))
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_resume_with_nothing_to_resume(data_file, tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(tiny_config(data_file, tmp_path / "empty", "--resume"))


def test_overwrite_refuses_a_folder_that_is_not_a_run(data_file, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.docx").write_text("years of work")
    with pytest.raises(RunDirError, match="not a run of this tool"):
        train(tiny_config(data_file, home, "--max-steps", "1"))
    with pytest.raises(RunDirError, match="--overwrite replaces only runs of this tool"):
        train(tiny_config(data_file, home, "--max-steps", "1", "--overwrite"))
    assert (home / "thesis.docx").read_text() == "years of work"


def test_run_config_records_the_resolved_yaml_settings(data_file, tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("lora_r: 4\nmax_steps: 2\nreport_to: tensorboard\neval_steps: 1\nweight_decay: 0.01\n",
                         encoding="utf-8")
    from glmtune.core import cli
    from glmtune.core.config import TrainConfig

    out = tmp_path / "run"
    config, options = cli.parse_args(TrainConfig, "t", ["--config", str(yaml_file), "--model", "tiny", "--data",
                                                        str(data_file), "--output-dir", str(out), "--batch-size",
                                                        "4", "--grad-accum", "2", "--eval-ratio", "0.2"])
    job = train(config, options.config_file)
    record = json.loads((out / "run_config.json").read_text())
    assert record["config_file"] == str(yaml_file)
    assert (record["settings"]["lora_r"], record["settings"]["max_steps"], record["settings"]["weight_decay"]) == \
        (4, 2, 0.01)
    assert job.trainer.args.weight_decay == 0.01
    assert [h["step"] for h in job.trainer.state.log_history if "eval_loss" in h][:2] == [1, 2]  # --eval-steps 1
    events = list((out / "runs").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0  # TensorBoard out of the box
    assert "tensorboard --logdir" in job.final_summary()


def test_optimisation_flags_reach_the_trainer(data_file, tmp_path):
    config = tiny_config(data_file, tmp_path, "--lr-scheduler", "cosine", "--max-grad-norm", "0.3",
                         "--save-total-limit", "0", "--weight-decay", "0.1")
    args = training_arguments(config, 4, 2, "fp32", has_eval=True)
    assert (args.lr_scheduler_type.value, args.max_grad_norm, args.save_total_limit, args.weight_decay,
            args.eval_strategy.value) == ("cosine", 0.3, None, 0.1, "epoch")


def test_a_signal_repeated_at_once_is_the_same_ctrl_c_and_a_later_one_stops_at_once(monkeypatch):
    # torchrun passes the terminal's Ctrl-C on to workers that already got it from the terminal
    clock = [100.0]
    monkeypatch.setattr("glmtune.training.trainer.time.monotonic", lambda: clock[0])
    stop = StopOnInterrupt()
    stop.request()
    clock[0] += 0.01
    stop.request()  # the launcher's copy of the same press: no KeyboardInterrupt
    clock[0] += StopOnInterrupt.SAME_PRESS_S
    with pytest.raises(KeyboardInterrupt):
        stop.request()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(data_file, tmp_path):
    out = tmp_path / "run"
    users = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, out, *FLAGS), callbacks=[KillAtStep(1)])
    assert signal.getsignal(signal.SIGINT) is users  # a failed run gives Ctrl-C back
    assert checkpoints(out) == [] and RunRecord.load(out).state == "running"
    job = train(tiny_config(data_file, out, *FLAGS, "--resume"))  # starts at step 0: nothing was saved
    assert job.trainer.state.global_step == 4 and RunRecord.load(out).state == "finished"


def test_a_checkpoint_cut_short_is_never_resumed_from(data_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, out, *FLAGS), callbacks=[KillAtStep(3)])
    # checkpoint-4 as a kill during its save leaves it: the adapter written, trainer_state.json cut short
    partial = out / "checkpoint-4"
    shutil.copytree(out / "checkpoint-2", partial)
    (partial / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    assert last_checkpoint(out) == out / "checkpoint-2"
    job = train(tiny_config(data_file, out, *FLAGS, "--resume"))
    assert job.trainer.state.global_step == 4 and RunRecord.load(out).state == "finished"
    assert json.loads((partial / "trainer_state.json").read_text())["global_step"] == 4  # rewritten whole


def test_a_kill_before_the_run_record_does_not_block_the_rerun(data_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run_config.json.k2j3l4.tmp").write_text('{"settings": {"mod')  # write_atomic's scratch, cut short
    job = train(tiny_config(data_file, out, "--max-steps", "1"))
    assert RunRecord.load(out).state == "finished" and job.trainer.state.global_step == 1


@pytest.mark.parametrize("damage", [
    '{"settings": {"model": "ti', "[1, 2]", '{"settings": {"lora_r": "many"}}',
    '{"settings": {"lora_r": 8}}',  # no model: which base?
    '{"settings": {"model": "tiny", "max_length": -5}}',
    '{"settings": {"model": "tiny"}, "resolved": {"prompt_format": "weird"}}',
    '{"settings": {"model": "tiny"}, "resolved": {"eval_file": 5}}',
    '{"settings": {"model": "tiny"}, "state": "done"}',  # neither running nor finished: cannot be told
])
def test_a_damaged_run_record_is_one_clear_error(data_file, trained, tmp_path, damage):
    run = copy_run(trained, tmp_path)
    (run / "run_config.json").write_text(damage)
    with pytest.raises(RunDirError, match=r"run_config.json is damaged.*--output-dir"):
        train(tiny_config(data_file, run, "--max-steps", "12", "--learning-rate", "5e-3", "--resume"))
    with pytest.raises(RunDirError, match=r"run_config.json is damaged"):
        compare(compare_config(run))


def fail_when_saving(monkeypatch, in_folder: str):
    """torch.save as it behaves on a full disk (a partial file, then torch's own error) for writes
    into `in_folder`; the Trainer saves optimizer and RNG state with it."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if in_folder in str(f):
            Path(f).write_bytes(b"PK\x03\x04")
            raise RuntimeError(TORCH_FULL_DISK)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_disk_full_at_a_checkpoint_drops_it_and_resume_continues(data_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fail_when_saving(monkeypatch, "checkpoint-4")
    with pytest.raises(TrainingError, match=r"could not write a checkpoint in .*: the disk is full or failing "
                                            r"\(.* GiB free\); removed checkpoint-4 \(cut short\)\. .*--resume; "
                                            r"it continues from checkpoint-2"):
        train(tiny_config(data_file, out, *FLAGS))
    assert checkpoints(out) == [out / "checkpoint-2"] and not (out / "adapter_model.safetensors").exists()
    monkeypatch.undo()  # space freed
    job = train(tiny_config(data_file, out, *FLAGS, "--resume"))
    assert job.trainer.state.global_step == 4 and RunRecord.load(out).state == "finished"


@pytest.mark.parametrize("logging", [[], ["--logging-steps", "10"]])  # the second logs no loss before the end
def test_disk_full_at_the_final_save_keeps_the_last_checkpoint(data_file, tmp_path, monkeypatch, logging):
    from safetensors import SafetensorError

    out = tmp_path / "run"

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    class FailFinalSave(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            monkeypatch.setattr(model, "save_pretrained", full)

    with pytest.raises(TrainingError, match=r"could not write the adapter in .*: no space left on the device.*"
                                            r"it continues from checkpoint-4"):
        train(tiny_config(data_file, out, *FLAGS, *logging), callbacks=[FailFinalSave()])
    assert not list(out.glob(".saving-*")) and not (out / "adapter_model.safetensors").exists()
    monkeypatch.undo()
    job = train(tiny_config(data_file, out, *FLAGS, *logging, "--resume"))
    assert RunRecord.load(out).state == "finished" and job.trainer.state.global_step == 4  # no extra step
    final, last = (load_file(p / "adapter_model.safetensors") for p in (out, out / "checkpoint-4"))
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)


def can_mount_tmpfs(target: Path) -> bool:
    target.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(target)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs), where the machine lets us mount one."""
    disk = tmp_path / "disk"
    if not can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected faults above still run")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


class FillDiskAfterFirstSave(TrainerCallback):
    def __init__(self, disk):
        self.disk = disk

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            with open(self.disk / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass


def test_a_real_full_disk_drops_the_checkpoint_it_cut_short_and_resume_continues(data_file, small_disk):
    out = small_disk / "run"
    with pytest.raises(TrainingError, match=r"could not write a checkpoint.*(no space left|full).*checkpoint-2"):
        train(tiny_config(data_file, out, *FLAGS), callbacks=[FillDiskAfterFirstSave(small_disk)])
    assert checkpoints(out) == [out / "checkpoint-2"]
    (small_disk / "filler").unlink()
    assert train(tiny_config(data_file, out, *FLAGS, "--resume")).trainer.state.global_step == 4


@pytest.mark.parametrize("damage", [
    lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:100]),
    lambda c: (c / "adapter_model.safetensors").write_bytes(b"\0" * 8),
    lambda c: (c / "trainer_state.json").write_text("[1]"),
])
def test_a_damaged_last_checkpoint_is_skipped_and_named(data_file, tmp_path, damage):
    from glmtune.training.job import FineTune

    out = tmp_path / "run"
    flags = ("--max-steps", "4", "--save-steps", "1", "--learning-rate", "5e-3")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, out, *flags), callbacks=[KillAtStep(3)])
    damage(out / "checkpoint-2")
    (out / ".saving-x1y2").mkdir()  # a kill during the final save leaves this
    prepared = FineTune(tiny_config(data_file, out, *flags, "--resume")).prepare()
    assert prepared.resume_from == out / "checkpoint-1"
    assert "removed .saving-x1y2 (scratch)" in prepared.removed
    assert any(note.endswith("checkpoint-2 (cut short)") or "set checkpoint-2 aside as .damaged-checkpoint-2" in note
               for note in prepared.removed), prepared.removed
    assert not (out / "checkpoint-2").exists() and not (out / ".saving-x1y2").exists()
    if (out / ".damaged-checkpoint-2").exists():  # written whole, damaged since: kept for the user, not deleted
        assert (out / ".damaged-checkpoint-2" / "trainer_state.json").is_file()


def test_a_diverging_run_shorter_than_the_logging_interval_is_not_finished(data_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="NaN/inf"):
        train(tiny_config(data_file, out, "--max-steps", "2", "--logging-steps", "5", "--learning-rate", "1e30"))
    assert RunRecord.load(out).state == "running" and not (out / "adapter_model.safetensors").exists()


def test_a_run_shorter_than_the_logging_interval_logs_its_last_loss(data_file, tmp_path, capsys):
    job = train(quick(data_file, tmp_path / "run", "--logging-steps", "5"))
    assert [h["step"] for h in job.trainer.state.log_history if "loss" in h] == [1]
    assert "final train loss" in job.final_summary()
    # on the console as a line a person reads, not the Trainer's dict of every logged number
    console = capsys.readouterr()
    assert re.search(r"^step +1  loss \d+\.\d{4}  lr ", console.out, re.M), console.out
    assert "{'" not in console.out + console.err


def test_sigterm_saves_a_checkpoint_like_ctrl_c(data_file, tmp_path):
    class TermAtStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped at step 2; checkpoint-2 is saved"):
        train(tiny_config(data_file, out, *FLAGS), callbacks=[TermAtStep()])
    assert last_checkpoint(out) == out / "checkpoint-2"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
