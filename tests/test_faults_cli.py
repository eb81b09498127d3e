"""Faults of the command line and the console: hostile or conflicting YAML, messages that blame the
wrong thing, printed commands that break on paste, caches that cannot be written, noise, terminals
and pipes that are not what the scripts assumed."""

import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from glmtune.core import cli
from glmtune.core.config import TrainConfig

from conftest import REPO

# 90 bytes that expand to 9**9 strings inside a setting whose error message would show the value
BILLION_LAUGHS = "lora_target:\n- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"- &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


def usage_error(capsys, *argv, cls=TrainConfig) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(cls, "test", list(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_yaml_alias_bomb_is_refused_at_once(capsys, data_file, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS, encoding="utf-8")
    began = time.perf_counter()
    err = usage_error(capsys, "--data", str(data_file), "--config", str(bomb))
    assert time.perf_counter() - began < 1
    assert f"{bomb}:3: *a: aliases are not accepted in a settings file" in err


def test_an_oversized_yaml_file_is_refused_unread(capsys, data_file, tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text(f"lora_target: {'q_proj,' * 200_000}q_proj\n", encoding="utf-8")
    assert f"{huge}: larger than 64 KiB" in usage_error(capsys, "--data", str(data_file), "--config", str(huge))


def test_max_new_tokens_beyond_the_context_blames_the_flag(trained, tmp_path):
    from glmtune.comparison.job import Comparison
    from glmtune.core.config import CompareConfig
    from glmtune.core.errors import ConfigError
    from glmtune.model.tokenizer import load_tokenizer

    out, _ = trained
    context = load_tokenizer(out).model_max_length
    job = Comparison(CompareConfig(adapter=out, max_new_tokens=context + 100, output=tmp_path / "report"))
    run = job.load_run()
    prompts = job.load_prompts(run)
    with pytest.raises(ConfigError) as refused:
        job.load_model(run, prompts)
    assert refused.value.field == "max_new_tokens"
    assert cli.message(refused.value).startswith(f"--max-new-tokens {context + 100} leaves no room for a prompt: "
                                                 f"this model's context holds {context} tokens")
    assert not (tmp_path / "report").exists()  # refused before the report folder is claimed

    from glmtune.comparison.chat import start
    from glmtune.training.runs import RunRecord

    with pytest.raises(ConfigError, match=f"leaves no room for a prompt: this model's context holds {context}"):
        start(CompareConfig(adapter=out, chat=True, max_new_tokens=context + 100), RunRecord.load(out), "tiny",
              io.StringIO())


def test_an_unwritable_cache_names_glmtune_cache(monkeypatch, tmp_path):
    from glmtune.core.errors import ModelLoadError
    from glmtune.model.tiny import ensure_tiny

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("GLMTUNE_CACHE", str(blocked / "cache"))
    with pytest.raises(ModelLoadError) as refused:
        ensure_tiny()
    code, line, _ = cli.explain(refused.value)
    assert code == cli.EXIT_ERROR and "\n" not in line
    assert line.startswith(f"error: {blocked / 'cache'}: cannot write the tiny model's cache there (")
    assert "set GLMTUNE_CACHE to a folder you can write to" in line


def test_config_errors_read_as_a_sentence_after_their_flag(trained):
    from glmtune.comparison.job import Comparison
    from glmtune.core.config import CompareConfig
    from glmtune.core.errors import ConfigError
    from glmtune.export.job import merge_device
    from glmtune.comparison.inference import Shape, plan_weights

    with pytest.raises(ConfigError) as no_gpu:
        merge_device("cuda", 1)
    assert cli.message(no_gpu.value) == "--device cuda: no CUDA GPU was found; use --device cpu (or auto)"

    with pytest.raises(ConfigError) as no_room:
        plan_weights("as-trained", "none", Shape.of_model("tiny"), 1.0, 1, 16, 32, 1, True)
    assert cli.message(no_room.value).startswith("--quantization as-trained (the run trained on none) holds the "
                                                 "weights in 16 bits")

    out, _ = trained
    job = Comparison(CompareConfig(adapter=out, base_model="THUDM/chatglm3-6b"))
    with pytest.raises(ConfigError) as six_b:
        job.load_run()
    assert cli.message(six_b.value).startswith("--base-model THUDM/chatglm3-6b (this adapter's base) is a 6B model "
                                               "that needs a CUDA GPU, and none was found")


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
    assert printed_command(lines, "next") == ["python", "chatglm_finetuning_tst.py", "--adapter", str(AWKWARD)]
    logs = next(line for line in lines if line.startswith("logs"))
    assert shlex.split(logs[logs.index("(") + 1:-1]) == ["tensorboard", "--logdir", str(AWKWARD / "runs")]

    lines = summary(ExportResult(adapter=AWKWARD, output=AWKWARD, format="native", dtype="fp32", device="cpu",
                                 base="tiny", parameters=10**6, trained="chat", template="chat",
                                 files=["model.safetensors"],
                                 seconds={"total": 1.0, "load": 0.1, "merge": 0.1, "write": 0.1}))
    assert printed_command(lines, "serve it") == ["vllm", "serve", str(AWKWARD)]


def test_an_over_long_text_is_measured_without_transformers_warning(caplog, tiny_dir):
    import logging

    from glmtune.model.prompts import prompt_ids
    from glmtune.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    logger = logging.getLogger("transformers.tokenization_utils_base")
    logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to pytest's
    try:
        ids = prompt_ids(tokenizer, "头痛" * tokenizer.model_max_length, "glm3")
    finally:
        logger.removeHandler(caplog.handler)
    assert len(ids) > tokenizer.model_max_length  # what our own refusal measures
    assert not [r for r in caplog.records if "Token indices" in r.getMessage()]


def test_a_loss_plot_without_losses_draws_no_legend_warning(recwarn, tmp_path):
    from glmtune.training.plots import plot_losses

    plot_losses([{"step": 2, "train_runtime": 1.0}], tmp_path / "loss.png")
    assert (tmp_path / "loss.png").is_file()
    assert not [str(w.message) for w in recwarn.list]


@pytest.fixture(scope="module")
def chat(trained):
    from glmtune.comparison.chat import start
    from glmtune.core.config import CompareConfig
    from glmtune.training.runs import RunRecord

    out, _ = trained
    return start(CompareConfig(adapter=out, chat=True, max_new_tokens=4), RunRecord.load(out), "tiny", io.StringIO())


def test_piped_chat_input_is_echoed_with_control_characters_escaped(chat):
    from glmtune.comparison.chat import talk

    chat.out = screen = io.StringIO()
    talk(chat, io.StringIO("\x1b[2J\x1b[31m/nope\x07\n"))
    assert "\x1b" not in screen.getvalue() and "\x07" not in screen.getvalue()
    assert screen.getvalue().startswith("> \\x1b[2J\\x1b[31m/nope\\x07\n")


def test_a_gbk_line_piped_into_the_chat_is_answered_and_the_chat_goes_on(chat):
    from glmtune.comparison.chat import talk

    chat.out = screen = io.StringIO()
    asked = len(chat.prompts)
    piped = io.TextIOWrapper(io.BytesIO("头痛怎么办？\n".encode("gbk") + "失眠呢？\n".encode("utf-8")),
                             encoding="utf-8")
    talk(chat, piped)
    shown = screen.getvalue().splitlines()
    shown[0].encode("utf-8")  # the echo holds the bytes it could not read escaped (\udcd4), not raw
    assert shown[0].startswith("> ") and "\\udcd4\\udcf5" in shown[0]
    assert shown[1].startswith("(this line is not UTF-8 text; skipped")
    assert shown[2] == "> 失眠呢？" and len(chat.prompts) == asked + 1  # the next line is answered


def script(*argv, **options) -> subprocess.CompletedProcess:
    """A script run as a user runs it, with the worktree's glmtune."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **options.pop("env", {})}
    return subprocess.run([sys.executable, *argv], capture_output=True, env=env, cwd=REPO, timeout=300, **options)


@pytest.mark.parametrize("argv", [["chatglm_finetuning.py"], ["chatglm_finetuning_tst.py"], ["-m", "glmtune.export"]])
def test_an_ascii_console_gets_escaped_text_not_a_crash(argv):
    done = script(*argv, "--help", env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr.decode("ascii", "replace")
    assert re.search(r"\\u[0-9a-f]{4}", done.stdout.decode("ascii"))  # its Chinese examples or dashes, escaped


def test_a_console_whose_reader_has_gone_swallows_the_rest(tmp_path):
    read, write = os.pipe()
    console = cli.Console(open(write, "wb"), encoding="ascii", errors="backslashreplace", line_buffering=True)
    console.write("高血压\n")
    assert os.read(read, 100) == b"\\u9ad8\\u8840\\u538b\n"  # escaped, not UnicodeEncodeError
    os.close(read)  # `head -1` has read its line and exited
    console.write("step 2 of 8\n")  # EPIPE: from now on the output goes nowhere, and the run goes on
    console.write("step 3 of 8\n")
    console.close()  # the flush at exit succeeds too (its failure would make the exit status 120)


@pytest.fixture(scope="module")
def trained_template_export(trained, tmp_path_factory):
    from glmtune.core.config import ExportConfig
    from glmtune.export.job import export

    run, _ = trained
    return run, export(ExportConfig(adapter=run, output=tmp_path_factory.mktemp("export") / "native", dtype="fp32",
                                    chat_template="trained"))


def test_the_trained_template_builds_the_prompts_training_used(trained_template_export):
    from transformers import AutoTokenizer

    from glmtune.export.job import summary
    from glmtune.model.prompts import prompt_ids
    from glmtune.model.tokenizer import load_tokenizer

    run, result = trained_template_export
    exported, training = AutoTokenizer.from_pretrained(result.output), load_tokenizer(run)
    for question in ("高血压能喝咖啡吗？ 男，50岁。", " leading space,  two spaces\nand a line"):
        assert exported.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_dict=False) == prompt_ids(training, question, "glm3")
    with pytest.raises(Exception, match="trained on the \\[Round 1\\] layout, which holds one user question"):
        exported.apply_chat_template([{"role": "system", "content": "你是医生"}, {"role": "user", "content": "q"}])
    assert [line for line in summary(result) if line.startswith("template")] == [
        "template   the glm3 layout this adapter was trained on ('[Round 1] 问：... 答：'), one question per "
        "conversation (--chat-template trained)"]


def test_a_glm3_adapter_exported_with_the_chat_template_says_so(trained_template_export):
    from dataclasses import replace

    from glmtune.export.job import summary

    run, result = trained_template_export
    template = next(line for line in summary(replace(result, template="chat")) if line.startswith("template"))
    assert template == ("template   ChatGLM3's chat layout (<|user|> ... <|assistant|>); this adapter was trained on "
                        "the glm3 layout ('[Round 1] 问：... 答：'), which it does not reproduce: --chat-template "
                        "trained installs that one")

    from glmtune.core.config import ExportConfig
    from glmtune.core.errors import ConfigError

    with pytest.raises(ConfigError, match="trained is for --format native"):  # chatglm keeps the base's tokenizer
        ExportConfig(adapter=run, format="chatglm", chat_template="trained").validate()
