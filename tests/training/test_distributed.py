"""Two processes on CPU (gloo), launched as users launch them: torchrun, and accelerate launch.
Training is data parallel through the Trainer's DDP; the comparison splits its prompts. Both must
give what one process gives with the same effective batch and seed."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from glmtune.comparison.job import compare
from glmtune.core.config import CompareConfig
from glmtune.training.job import train

from conftest import REPO, tiny_config


# Dropout off: each process draws its own masks, so with dropout the runs are alike only in distribution.
# 20 training rows make 5 micro-batches of 2 for each of 2 processes: no epoch ends in a part-filled
# step, where accelerate would top up the shorter process with rows from the epoch's start. 8 steps
# of 4 rows cross an epoch's end (at step 5); checkpoint-6 lies in the second epoch.
FLAGS = ("--max-steps", "8", "--save-steps", "6", "--learning-rate", "5e-3", "--lora-dropout", "0",
         "--eval-ratio", "0.17")
NOISE = ("Warning", "kernels", "Traceback", "deprecated")

TORCHRUN = ("torch.distributed.run", "--standalone", "--nproc_per_node", "2")
# --multi_gpu is accelerate's name for DDP; without GPUs it runs on gloo, as torchrun does
ACCELERATE = ("accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no")


def launch(launcher, script, *argv, cwd):
    env = os.environ | {"OMP_NUM_THREADS": "1",  # torchrun otherwise prints a banner about it
                        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", *launcher, str(REPO / script), *argv], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def two_processes(data_file, tmp_path_factory):
    """A finished two-process run: micro 2 x accum 1 x 2 processes = effective 4."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    argv = ["--model", "tiny", "--data", str(data_file), "--output-dir", str(out), "--batch-size", "2",
            "--grad-accum", "1", "--logging-steps", "1", *FLAGS]  # as tiny_config has them
    result = launch(TORCHRUN, "chatglm_finetuning.py", *argv, cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, argv, result


def lora(folder):
    return load_file(folder / "adapter_model.safetensors")


def test_two_processes_write_one_adapter_equal_to_one_process_with_the_same_effective_batch(
        two_processes, data_file, tmp_path):
    out, _, result = two_processes
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console, noise
    assert result.stdout.count("batch      micro 2 x accum 1 x 2 processes = effective 4") == 1  # rank 0 alone
    assert len(re.findall(r"finished\s+8 steps", result.stdout)) == 1
    assert f"next       torchrun --nproc_per_node 2 -m glmtune compare --adapter {out}" in result.stdout

    single = tmp_path / "one"
    job = train(tiny_config(data_file, single, *FLAGS, "--grad-accum", "2", "--batch-size", "2"))
    assert job.record.resolved.effective_batch == 4
    # the same files, once: nothing per process beside the Trainer's own per-rank RNG states
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single.iterdir())
    assert sorted(p.name for p in (out / "checkpoint-6").iterdir() if "rng_state" not in p.name) == \
        sorted(p.name for p in (single / "checkpoint-6").iterdir() if "rng_state" not in p.name)
    resolved = json.loads((out / "run_config.json").read_text(encoding="utf-8"))["resolved"]
    assert (resolved["micro_batch"], resolved["grad_accum"], resolved["processes"], resolved["effective_batch"]) == \
        (2, 1, 2, 4)

    two, one = lora(out), lora(single)
    assert two.keys() == one.keys()
    assert any(t.abs().max() > 0.01 for t in two.values())  # trained: the B matrices start at zero
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6, msg=name)
    losses = [[h["loss"] for h in json.loads((folder / "train_metrics.json").read_text())["log_history"] if "loss" in h]
              for folder in (out, single)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


# One launch for the rest (each costs seconds of imports): the interrupted copy resumed, then the
# finished run compared, through the same stages the scripts run.
RESUME_AND_COMPARE = """
import sys
from pathlib import Path

from glmtune.core import cli
from glmtune.comparison.job import compare
from glmtune.core.config import CompareConfig, TrainConfig
from glmtune.training.job import train

killed, finished, report = map(Path, sys.argv[1:4])
config, _ = cli.parse_args(TrainConfig, "resume", sys.argv[4:])
train(config)
for settings in ({"output": report, "max_new_tokens": 12},
                 {"output": report.with_name("one-prompt"), "prompt": ["孩子发烧怎么办？"], "max_new_tokens": 4}):
    compare_config = CompareConfig(adapter=finished, **settings)
    compare_config.validate()
    compare(compare_config)
"""


@pytest.fixture(scope="module")
def resumed_and_compared(two_processes):
    """What a kill after step 6 leaves (the run recorded as running, checkpoint-6, nothing after
    it) resumed by two processes; and the finished run compared by two processes, on its eval
    split and on one question (a process without a prompt). Launched by accelerate, as the
    training run was by torchrun."""
    out, argv, _ = two_processes
    killed = out.with_name("killed")
    shutil.copytree(out / "checkpoint-6", killed / "checkpoint-6")
    record = json.loads((out / "run_config.json").read_text(encoding="utf-8"))
    (killed / "run_config.json").write_text(json.dumps(record | {"state": "running"}), encoding="utf-8")
    worker = out.with_name("worker.py")
    worker.write_text(RESUME_AND_COMPARE, encoding="utf-8")
    argv = [str(killed) if arg == str(out) else arg for arg in argv]
    result = launch(ACCELERATE, worker, str(killed), str(out), str(out.with_name("two")), *argv, "--resume",
                    cwd=out.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return killed, out.with_name("two"), result


def test_two_processes_resume_an_interrupted_run_where_it_stopped(two_processes, resumed_and_compared):
    out, _, _ = two_processes
    killed, _, _ = resumed_and_compared
    assert json.loads((killed / "run_config.json").read_text(encoding="utf-8"))["state"] == "finished"
    resumed, straight = lora(killed), lora(out)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], msg=name)


def test_two_process_comparison_equals_the_one_process_report(two_processes, resumed_and_compared, tmp_path):
    out, _, _ = two_processes
    _, folder, _ = resumed_and_compared
    config = CompareConfig(adapter=out, output=tmp_path / "one", max_new_tokens=12)
    config.validate()
    compare(config)
    two, one = (json.loads((path / "chatglm_comparison.json").read_text(encoding="utf-8"))
                for path in (folder, tmp_path / "one"))
    assert two["settings"]["processes"] == 2 and one["settings"]["processes"] == 1
    assert len(one["samples"]) == 4
    for report in (one, two):  # clock readings differ from run to run; every other number must not
        for sample in report["samples"]:
            for side in ("base", "tuned"):
                for clock in ("latency_s", "ttft_s", "decode_tok_s"):
                    del sample[side][clock]
        for clock in ("latency_s", "ttft_s", "decode_tok_s"):
            del report["aggregate"]["metrics"][clock]
    assert two["samples"] == one["samples"]
    assert two["aggregate"] == one["aggregate"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    question = json.loads((folder.with_name("one-prompt") / "chatglm_comparison.json").read_text(encoding="utf-8"))
    assert [sample["prompt"] for sample in question["samples"]] == ["孩子发烧怎么办？"]
