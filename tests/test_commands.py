"""The commands as a user runs them: `glmtune` and its subcommands (the flags of the original commands,
checked before torch loads, usage lines naming the command), both scripts end to end in real processes
on a quiet console, --help on an ASCII console, and the commands they print pasted back."""

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

import glmtune.__main__ as command
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
    assert f"next       glmtune compare --adapter {out}" in result.stdout
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
    from glmtune.export.job import ExportResult, summary
    from glmtune.training.job import TrainingResult

    job = SimpleNamespace(
        config=TrainConfig(output_dir=AWKWARD, report_to="tensorboard"),
        metrics={"train_seconds": 1.0, "train_tokens_per_s": 1.0},
        trainer=SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 1.0}], global_step=2), memory_events=[]),
        record=SimpleNamespace(resolved=SimpleNamespace(eval_file="eval.jsonl")))
    lines = TrainingResult.final_summary(job).splitlines()
    assert printed_command(lines, "next") == ["glmtune", "compare", "--adapter", str(AWKWARD)]
    logs = next(line for line in lines if line.startswith("logs"))
    assert shlex.split(logs[logs.index("(") + 1:-1]) == ["tensorboard", "--logdir", str(AWKWARD / "runs")]

    lines = summary(ExportResult(adapter=AWKWARD, output=AWKWARD, format="native", dtype="fp32", device="cpu",
                                 base="tiny", parameters=10**6, trained="chat", template="chat",
                                 files=["model.safetensors"],
                                 seconds={"total": 1.0, "load": 0.1, "merge": 0.1, "write": 0.1}))
    assert printed_command(lines, "serve it") == ["vllm", "serve", str(AWKWARD)]


@pytest.fixture
def jobs(monkeypatch):
    """Every subcommand's job replaced by a recorder: what the command would run, and with what."""
    ran = []
    for name, entry in command.COMMANDS.items():
        monkeypatch.setitem(command.COMMANDS, name, dataclasses.replace(
            entry, job=lambda config, options, name=name: ran.append((name, config, options))))
    return ran


def usage_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        command.main(list(argv))
    assert exit_.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_chat_is_the_comparison_with_chat_on(jobs, tmp_path):
    """`glmtune chat --adapter out` runs what `chatglm_finetuning_tst.py --adapter out --chat` runs."""
    command.main(["chat", "--adapter", str(tmp_path), "--do-sample", "--seed", "7"])
    command.run_command("compare", ["--adapter", str(tmp_path), "--do-sample", "--seed", "7", "--chat"])
    (chat, chat_config, _), (compare, compare_config, _) = jobs
    assert (chat, compare) == ("chat", "compare")
    assert chat_config == compare_config and chat_config.chat and chat_config.seed == 7


def test_each_subcommand_takes_its_configs_flags(jobs, data_file, tmp_path):
    command.main(["train", "--model", "tiny", "--data", str(data_file), "--lr", "2e-4"])
    command.main(["compare", "--adapter", str(tmp_path), "--num-samples", "3"])
    command.main(["export", "--adapter", str(tmp_path), "--output", str(tmp_path / "merged"), "--format", "chatglm"])
    (train, t, options), (compare, c, _), (export, e, _) = jobs
    assert (train, t.model, t.data, t.learning_rate, options.debug) == ("train", "tiny", data_file, 2e-4, False)
    assert (compare, c.num_samples, c.chat) == ("compare", 3, False)
    assert (export, e.format, e.output) == ("export", "chatglm", tmp_path / "merged")


def test_chat_refuses_the_comparisons_prompt_and_report_settings(capsys, jobs, tmp_path):
    err = usage_error(capsys, "chat", "--adapter", str(tmp_path), "--num-samples", "5")
    assert err.startswith("glmtune chat: error: unrecognized arguments: --num-samples 5")
    settings = tmp_path / "chat.yaml"
    settings.write_text("temperature: 0.5\noutput: report\n")
    err = usage_error(capsys, "chat", "--adapter", str(tmp_path), "--config", str(settings))
    assert "unknown setting 'output'" in err
    assert not jobs


def test_a_bad_flag_is_one_line_naming_the_subcommand(capsys, jobs, tmp_path):
    err = usage_error(capsys, "train", "--data", str(tmp_path / "nope.txt"))
    assert err.startswith("glmtune train: error: --data ") and "nope.txt: no such file" in err
    assert usage_error(capsys, "export", "--adapter", str(tmp_path), "--dtype", "int8").startswith(
        "glmtune export: error: argument --dtype: invalid choice: 'int8'")
    assert not jobs


@pytest.mark.parametrize("argv, problem", [([], "a command is missing"), (["tune"], "unknown command 'tune'"),
                                           (["--lr", "1e-4"], "unknown command '--lr'")])
def test_a_missing_or_unknown_subcommand_lists_the_subcommands(capsys, argv, problem):
    err = usage_error(capsys, *argv)
    assert err == f"glmtune: error: {problem}; use one of: train, compare, chat, export (--help says what each does)\n"


def test_help_lists_the_subcommands_and_each_subcommands_help_its_examples(capsys):
    command.main(["--help"])
    overview = capsys.readouterr().out
    assert all(f"\n  {name} " in overview for name in command.COMMANDS)
    for name in command.COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            command.main([name, "--help"])
        shown = capsys.readouterr().out
        assert exit_.value.code == 0
        assert shown.startswith(f"usage: glmtune {name} [-h]")
        assert f"\n    glmtune {name} --adapter" in shown or f"\n    glmtune {name} --model tiny" in shown


def test_the_original_commands_name_themselves_in_their_usage_line():
    """Their help shows the glmtune examples, under a usage line of the command that was typed."""
    for argv, usage in [(["chatglm_finetuning.py"], "chatglm_finetuning.py"),
                        (["chatglm_finetuning_tst.py"], "chatglm_finetuning_tst.py"),
                        (["-m", "glmtune.export"], "python -m glmtune.export"),
                        (["-m", "glmtune", "chat"], "python -m glmtune chat")]:
        done = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: {usage} [-h]"), done.stdout[:200]
        assert "\n    glmtune " in done.stdout


def test_flag_errors_come_before_heavy_imports(tmp_path):
    """`glmtune SUBCOMMAND` with a typo: reported with no torch, transformers or peft imported."""
    code = ("import sys\nfrom glmtune.__main__ import main\n"
            f"for argv in (['train', '--data', {str(tmp_path)!r}, '--lora-r', '0'], ['compare', '--top-p', '2'],\n"
            f"             ['chat', '--adapter', {str(tmp_path / 'nope')!r}], ['export', '--dtype', 'int8']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
    assert [line.split(":")[0] for line in done.stderr.splitlines()] == [
        "glmtune train", "glmtune compare", "glmtune chat", "glmtune export"]


def test_the_package_registers_the_glmtune_command():
    with (REPO / "pyproject.toml").open("rb") as stream:
        scripts = tomllib.load(stream)["project"]["scripts"]
    module, function = scripts["glmtune"].split(":")
    assert (module, function) == ("glmtune.__main__", "main") and callable(command.main)


def test_the_flag_reference_lists_exactly_the_flags_each_subcommand_takes():
    reference = command.flag_reference()
    for name, entry in command.COMMANDS.items():
        section = reference.split(f"## glmtune {name}\n")[1].split("\n## ")[0]
        listed = re.findall(r"^\| `(--[a-z0-9-]+)`", section, flags=re.M)
        assert listed == [*(cli.flag(f.name) for f in cli.settings(entry.config, entry.only)), "--config", "--debug"]
