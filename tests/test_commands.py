"""The commands as a user runs them: both scripts end to end in real processes on a quiet console,
--help on an ASCII console, and the commands they print pasted back."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from glmtune.core import cli
from glmtune.core.config import TrainConfig

from conftest import REPO


def run_script(script, *argv, cwd):
    return subprocess.run([sys.executable, str(REPO / script), *argv], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_both_scripts_end_to_end_on_a_quiet_console(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_script("chatglm_finetuning.py", "--model", "tiny", "--data", str(data_file), "--output-dir",
                        str(out), "--max-steps", "4", "--batch-size", "4", "--grad-accum", "2", "--eval-ratio",
                        "0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    for noise in ("Warning", "kernels", "Traceback", "deprecated"):
        assert noise not in console, noise
    assert re.search(r"finished\s+4 steps in .* tokens/s", result.stdout)
    assert f"next       python chatglm_finetuning_tst.py --adapter {out}" in result.stdout
    assert json.loads((out / "run_config.json").read_text())["state"] == "finished"

    from glmtune.training.job import train

    again, _ = cli.parse_args(TrainConfig, "t", ["--model", "tiny", "--data", str(data_file), "--output-dir", str(out),
                                                 "--max-steps", "4", "--batch-size", "4", "--grad-accum", "2",
                                                 "--eval-ratio", "0.2", "--resume"])
    with pytest.raises(SystemExit) as refused:  # the scripts' error boundary, in this process
        cli.run(train, again)
    stderr = capsys.readouterr().err
    assert refused.value.code == 1 and "holds this run, finished" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1

    # the comparison piped into `head -1`: its reports are written before its verdict is printed, and
    # the pipe closed after the first line stops nothing
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr, subprocess.Popen(
            [sys.executable, str(REPO / "chatglm_finetuning_tst.py"), "--adapter", str(out), "--max-new-tokens", "8"],
            stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=tmp_path) as compared:
        weights = compared.stdout.readline()
        compared.stdout.close()
        assert compared.wait(timeout=300) == 0, errors.read_text()[-2000:]
    assert weights.startswith("weights:  fp32, adapter merged after the base side; ")
    log = (out / "comparison" / "chatglm_comparison.log").read_text(encoding="utf-8")
    assert "decoding: static KV cache, eager (compiled decoding needs a CUDA GPU)" in log
    assert "VERDICT (" in log and "medical terms / 100 chars" in log
    assert (out / "comparison" / "chatglm_comparison.html").is_file()
    for noise in ("Warning", "kernels", "Traceback"):
        assert noise not in errors.read_text(), noise

    # the chat, fed through a pipe: one turn per line, answers printed, ends with the input
    chat = subprocess.run([sys.executable, str(REPO / "chatglm_finetuning_tst.py"), "--adapter", str(out), "--chat",
                           "--max-new-tokens", "6"], input="头痛怎么办？\n/both\n还要注意什么？\n", capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    marks = ["> 头痛怎么办？\n[fine-tuned] ", "\n> /both\n(answering: base, then fine-tuned)\n> 还要注意什么？\n[base] ",
             "\n[fine-tuned] "]
    at = [chat.stdout.find(marks[0]), chat.stdout.find(marks[1]), chat.stdout.rfind(marks[2])]
    assert -1 not in at and at == sorted(at), chat.stdout  # answers can hold line breaks: order, not lines
    for noise in ("Warning", "kernels", "Traceback"):
        assert noise not in chat.stdout + chat.stderr, noise


def script(*argv, **options) -> subprocess.CompletedProcess:
    """A script run as a user runs it, with the worktree's glmtune."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **options.pop("env", {})}
    return subprocess.run([sys.executable, *argv], capture_output=True, env=env, cwd=REPO, timeout=300, **options)


@pytest.mark.parametrize("argv", [["chatglm_finetuning.py"], ["chatglm_finetuning_tst.py"], ["-m", "glmtune.export"]])
def test_an_ascii_console_gets_escaped_text_not_a_crash(argv):
    done = script(*argv, "--help", env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr.decode("ascii", "replace")
    assert re.search(r"\\u[0-9a-f]{4}", done.stdout.decode("ascii"))  # its Chinese examples or dashes, escaped


AWKWARD = Path("/tmp/my runs/it's $HOME")  # a space, a quote and a `$`: each breaks an unquoted paste


def printed_command(lines: list[str], label: str) -> list[str]:
    line = next(line for line in lines if line.startswith(label))
    return shlex.split(line[len(label):].strip())


def test_printed_commands_paste_back_to_the_same_words():
    from glmtune.export.job import Export, ExportResult
    from glmtune.training.job import FineTune

    job = SimpleNamespace(
        config=TrainConfig(output_dir=AWKWARD, report_to="tensorboard"), out=AWKWARD, metrics={}, eval_ds=[],
        trainer=SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 1.0}], global_step=2), memory_events=[]),
        train_seconds=1.0, tokens_per_s=1.0, record=SimpleNamespace(resolved=SimpleNamespace(eval_file="eval.jsonl")))
    lines = FineTune.final_summary(job).splitlines()
    assert printed_command(lines, "next") == ["python", "chatglm_finetuning_tst.py", "--adapter", str(AWKWARD)]
    logs = next(line for line in lines if line.startswith("logs"))
    assert shlex.split(logs[logs.index("(") + 1:-1]) == ["tensorboard", "--logdir", str(AWKWARD / "runs")]

    export = SimpleNamespace(config=SimpleNamespace(adapter=AWKWARD), template_layout=lambda: "chat",
                             run=SimpleNamespace(resolved=SimpleNamespace(prompt_format="chat")),
                             result=ExportResult(output=AWKWARD, format="native", dtype="fp32", device="cpu",
                                                 base="tiny", parameters=10**6, files=["model.safetensors"],
                                                 seconds={"total": 1.0, "load": 0.1, "merge": 0.1, "write": 0.1}))
    lines = Export.summary(export)
    assert printed_command(lines, "serve it") == ["vllm", "serve", str(AWKWARD)]
