"""The output folder across a run's life: new, interrupted (Ctrl-C or kill), resumed, finished,
another run's, or not a run at all; and what a run logs on the way."""

import json
import os
import signal

import pytest
from transformers import TrainerCallback

from glmtune.core.errors import Interrupted, RunDirError
from glmtune.training.job import train
from glmtune.training.runs import RunRecord, last_checkpoint
from glmtune.training.trainer import StopOnInterrupt, training_arguments

from conftest import tiny_config

FLAGS = ("--max-steps", "4", "--save-steps", "2", "--learning-rate", "5e-3")


class CtrlCAtStep(TrainerCallback):
    """Presses Ctrl-C (a real SIGINT to this process) during step `step`."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_and_rerun_asks_for_resume(data_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="stopped at step 1; checkpoint-1 is saved.*--resume") as stopped:
        train(tiny_config(data_file, out, *FLAGS), callbacks=[CtrlCAtStep(1)])
    assert stopped.value.checkpoint == str(out / "checkpoint-1")
    assert last_checkpoint(out) == out / "checkpoint-1"
    assert not (out / "adapter_model.safetensors").exists()  # no final adapter from an unfinished run
    assert RunRecord.load(out).state == "running"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is the user's again

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
