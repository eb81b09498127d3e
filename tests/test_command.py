"""The `glmtune` command: its subcommands take the flags of the original commands, check them before
torch loads, and name themselves in their usage lines."""

import dataclasses
import os
import re
import subprocess
import sys
import tomllib

import pytest

import glmtune.__main__ as command
from glmtune.core import cli
from conftest import REPO


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
