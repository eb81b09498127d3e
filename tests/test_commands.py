"""The commands as a user runs them: `glmtune` and its subcommands (the flags of the original commands,
checked before torch loads, usage lines naming the command), the README's demo as written and the
original chat script, in real processes on a console free of warnings, --help on an ASCII console, and
the commands they print pasted back."""

import dataclasses
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import glmtune.__main__ as command
from glmtune.core import cli
from glmtune.core.config import TrainConfig

from conftest import REPO, readme_setup

# A Python warning of any library (peft's "upgrade PEFT" is a UserWarning), or a notice that hides one
NOISE = re.compile(r"Warning|warnings\.warn|upgrade PEFT|deprecated|Traceback|kernels")


def readme_demo() -> str:
    """The CPU demo as the README's first set-up line gives it, without the install in front."""
    steps = [step.strip() for step in readme_setup()[0].split("&&")]
    return " && ".join(step for step in steps if not step.startswith("pip "))


def quiet(console: str) -> None:
    noise = [line for line in console.splitlines() if NOISE.search(line)]
    assert not noise, "\n".join(noise)


def test_the_readme_demo_runs_as_written_on_a_quiet_console(tmp_path, monkeypatch, capsys):
    """The README's demo line in a shell, in a folder holding what it reads (16 lines of
    financial_data.txt, so that it takes seconds: 3 steps, 1 prompt), then the chat from a pipe."""
    demo = readme_demo()
    assert demo == "glmtune train --model tiny --output-dir out && glmtune compare --adapter out"
    for name in ("financial_data.txt", "financial_data.departments.txt"):
        lines = (REPO / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (tmp_path / name).write_text("".join(lines[:16]), encoding="utf-8")
    if shutil.which("glmtune") is None:  # not installed (`pip install -e .` puts it on PATH): the same command
        demo = demo.replace("glmtune ", f"{shlex.quote(sys.executable)} -m glmtune ")
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the installed command, running this checkout's glmtune
    report = tmp_path / "out" / "comparison"
    console = []
    with subprocess.Popen(["bash", "-c", demo], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=tmp_path, env=env) as shell:
        for line in shell.stdout:
            console.append(line)
            if line.startswith("VERDICT ("):  # the reports are published before the verdict is printed
                assert (report / "chatglm_comparison.json").is_file()
        assert shell.wait(timeout=300) == 0, "".join(console)[-3000:]
    console = "".join(console)
    quiet(console)
    assert re.search(r"\nfinished\s+\d+ steps in .* tokens/s\n", console)
    assert "\nnext       glmtune compare --adapter out\n" in console
    assert "\nweights:  fp32, adapter merged after the base side; " in console
    out = tmp_path / "out"
    assert json.loads((out / "run_config.json").read_text())["state"] == "finished"
    log = (report / "chatglm_comparison.log").read_text(encoding="utf-8")
    assert "decoding: static KV cache, eager (compiled decoding needs a CUDA GPU)" in log
    assert "VERDICT (" in log and "medical terms / 100 chars" in log
    assert (report / "chatglm_comparison.html").is_file()

    monkeypatch.chdir(tmp_path)  # the same run, asked for again from where the README ran it
    from glmtune.training.job import train

    again, _ = cli.parse_args(TrainConfig, "t", ["--model", "tiny", "--output-dir", "out"])
    with pytest.raises(SystemExit) as refused:  # the commands' error boundary, in this process
        cli.run(train, again)
    stderr = capsys.readouterr().err
    assert refused.value.code == 1 and "out holds this run, finished" in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1

    # the chat, fed through a pipe: one turn per line, answers printed, ends with the input (in this
    # process: the scripts' own processes are run by the --help tests below)
    monkeypatch.setattr(sys, "stdin", io.StringIO("头痛怎么办？\n/both\n还要注意什么？\n"))
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        command.run_command("chat", ["--adapter", "out", "--max-new-tokens", "6"])
    chat = capsys.readouterr()
    marks = ["> 头痛怎么办？\n[fine-tuned] ", "\n> /both\n(answering: base, then fine-tuned)\n> 还要注意什么？\n[base] ",
             "\n[fine-tuned] "]
    at = [chat.out.find(marks[0]), chat.out.find(marks[1]), chat.out.rfind(marks[2])]
    assert -1 not in at and at == sorted(at), chat.out  # answers can hold line breaks: order, not lines
    quiet(chat.out + chat.err)
    assert not [str(w.message) for w in warned]


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


def test_help_examples_paste_as_shown(capsys):
    """The chat's pipe example keeps its `\\n` escapes on one line: printf, not the help, makes the breaks."""
    with pytest.raises(SystemExit):
        command.main(["chat", "--help"])
    shown = capsys.readouterr().out
    assert "\n    printf '头痛怎么办？\\n吃什么药？\\n' | glmtune chat --adapter out\n" in shown


def test_the_original_commands_name_themselves_in_their_usage_line():
    """Their help shows the glmtune examples, under a usage line of the command that was typed."""
    for argv, usage in [(["chatglm_finetuning.py"], "chatglm_finetuning.py"),
                        (["chatglm_finetuning_tst.py"], "chatglm_finetuning_tst.py"),
                        (["-m", "glmtune.export"], "python -m glmtune.export"),
                        (["-m", "glmtune", "chat"], "python -m glmtune chat")]:
        done = script(*argv, "--help", text=True)
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
