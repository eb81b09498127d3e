"""The command line: flags from the config dataclasses, HF-style spellings, --config YAML, the error
boundary, and each script end to end in a real process (the console a user sees)."""

import json
import re
import subprocess
import sys
import time

import pytest

from glmtune.core import cli
from glmtune.core.config import CompareConfig, TrainConfig
from glmtune.core.errors import ConfigError, DataError, RunDirError

from conftest import REPO


def parse(*argv, cls=TrainConfig):
    return cli.parse_args(cls, "test", list(argv))[0]


def usage_error(capsys, *argv, cls=TrainConfig) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(*argv, cls=cls)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, not argparse's usage block
    return err


def test_defaults_are_the_seed_recipe(data_file):
    c = parse("--data", str(data_file))
    assert (c.lora_r, c.lora_alpha, c.lora_dropout, c.learning_rate, c.epochs, c.grad_accum, c.warmup_ratio,
            c.max_length) == (16, 32, 0.1, 1e-4, 3.0, 16, 0.03, 1024)
    assert c.lora_target == "query_key_value,dense,dense_h_to_4h,dense_4h_to_h" and c.quantization == "nf4"


def test_hf_spellings_are_aliases(data_file, tmp_path):
    c = parse("--data", str(data_file), "--output_dir", "o", "--num_train_epochs", "2",
              "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "8", "--learning_rate", "2e-4",
              "--lr_scheduler_type", "cosine", "--lora_rank", "8", "--max_seq_length", "512", "--bf16",
              "--report_to", "tensorboard", "--gradient_checkpointing", "--save_total_limit", "3",
              "--weight_decay", "0.01", "--max_grad_norm", "0.5", "--eval_steps", "20")
    assert (str(c.output_dir), c.epochs, c.batch_size, c.grad_accum, c.learning_rate, c.lr_scheduler, c.lora_r,
            c.max_length, c.precision, c.report_to, c.gradient_checkpointing, c.save_total_limit, c.weight_decay,
            c.max_grad_norm, c.eval_steps) == ("o", 2.0, "4", 8, 2e-4, "cosine", 8, 512, "bf16", "tensorboard",
                                               "on", 3, 0.01, 0.5, 20)
    assert parse("--data", str(data_file), "--gradient_checkpointing", "false").gradient_checkpointing == "off"
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    assert parse("--data", str(data_file), "--resume").resume == "last"
    assert parse("--data", str(data_file), "--resume_from_checkpoint", str(checkpoint)).resume == str(checkpoint)


def test_yaml_config_with_flags_overriding(data_file, tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(f"data: {data_file}\nnum_train_epochs: 2\nlearning_rate: 5e-5\nlora-r: 8\nbf16: true\n"
                         "gradient_checkpointing: false\neval_steps: null\n", encoding="utf-8")
    c = parse("--config", str(yaml_file), "--lora-r", "4")
    assert (c.data, c.epochs, c.learning_rate, c.lora_r, c.precision, c.gradient_checkpointing) == \
        (data_file, 2.0, 5e-5, 4, "bf16", "off")  # YAML's '5e-5' is a string to PyYAML; typed like the flag


@pytest.mark.parametrize("text, message", [
    ("lora_rnak: 8\n", "unknown setting 'lora_rnak'"),
    ("lora_r: eight\n", "lora_r: invalid literal"),
    ("lora_r: 8.5\n", "lora_r: must be a whole number"),
    ("overwrite: 1\n", "overwrite: must be true or false"),
    ("lr_scheduler: sometimes\n", "--lr-scheduler must be one of"),
    ("data: [a, b\n", "not valid YAML"),
    ("- a\n- b\n", "expected 'key: value' lines"),
    ("learning_rate: 1e-4\nlr: 5e-4\n", "'learning_rate' and 'lr' both set --learning-rate; keep one"),
    ("lora-r: 8\nlora_r: 16\n", "'lora-r' and 'lora_r' both set --lora-r; keep one"),
    ("precision: fp16\nbf16: true\n", "'precision' and 'bf16' both set --precision; keep one"),
    ("lora_r: 8\nseed: 1\nlora_r: 16\n", ":3: 'lora_r' is given twice; keep one"),
])
def test_bad_yaml_names_file_and_key(capsys, data_file, tmp_path, text, message):
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text(text, encoding="utf-8")
    err = usage_error(capsys, "--data", str(data_file), "--config", str(yaml_file))
    assert message in err and (str(yaml_file) in err or message.startswith("--"))


@pytest.mark.parametrize("argv, message", [
    (["--lora-rnak", "8"], "unrecognized arguments: --lora-rnak"),
    (["--lora-r", "0"], "--lora-r must be at least 1"),
    (["--lora-target", "attn"], "--lora-target unknown module 'attn'"),
    (["--batch-size", "big"], "--batch-size must be 'auto' or a positive integer"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    (["--resume", "/no/such/checkpoint-3"], "--resume /no/such/checkpoint-3: no such checkpoint folder"),
    (["--report-to", "neptune"], "--report-to unknown integration 'neptune'"),
    (["--eval-steps", "0"], "--eval-steps must be at least 1"),
    (["--config", "/no/such.yaml"], "/no/such.yaml: no such file"),
    (["--model", "/no/such/chatglm3"], "--model /no/such/chatglm3: no such folder"),
    (["--model", "./models/chatglm3-6b"], "--model models/chatglm3-6b: no such folder"),
    (["--learning-rate", "inf"], "--learning-rate must be a finite number, not inf"),  # trained to a NaN adapter
    (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["--epochs", "inf"], "--epochs must be a finite number"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
    (["--data", "/dev/null"], "--data /dev/null is not a regular file"),
])
def test_bad_flags_are_usage_errors_naming_the_flag(capsys, data_file, argv, message):
    assert message in usage_error(capsys, "--data", str(data_file), *argv)


def test_data_path_errors(capsys, tmp_path):
    assert "missing.txt: no such file" in usage_error(capsys, "--data", str(tmp_path / "missing.txt"))
    assert "is a folder; give the file itself" in usage_error(capsys, "--data", str(tmp_path))


def test_compare_flags(capsys, trained, tmp_path):
    out, _ = trained
    c = parse("--adapter", str(out), "--max_new_tokens", "8", "--per_device_eval_batch_size", "2", cls=CompareConfig)
    assert (c.max_new_tokens, c.batch_size) == (8, 2)
    assert "--adapter" in usage_error(capsys, "--adapter", str(tmp_path / "nope"), cls=CompareConfig)
    assert "--prompt is empty" in usage_error(capsys, "--adapter", str(out), "--prompt", " ", cls=CompareConfig)
    assert "--top-p must be in (0, 1]" in usage_error(capsys, "--adapter", str(out), "--top-p", "0",
                                                      cls=CompareConfig)
    assert "--temperature must be at least 0.01" in usage_error(capsys, "--adapter", str(out), "--temperature",
                                                                "1e-300", cls=CompareConfig)
    assert "--max-new-tokens must be in [1, 8192]" in usage_error(capsys, "--adapter", str(out), "--max-new-tokens",
                                                                  "1000000000000", cls=CompareConfig)
    assert "--seed must be in [0, 2**32)" in usage_error(capsys, "--adapter", str(out), "--seed", str(2**70),
                                                         cls=CompareConfig)


def cut_short_import() -> ImportError:
    error = ImportError("initialization failed")
    error.__cause__ = KeyboardInterrupt()
    return error


@pytest.mark.parametrize("error, code, line", [
    (ConfigError("precision", "bf16 needs a CUDA GPU"), 2, "error: --precision bf16 needs a CUDA GPU"),
    (DataError("a.txt: no usable examples"), 1, "error: a.txt: no usable examples"),
    (RunDirError("out holds another run"), 1, "error: out holds another run"),
    (OSError(28, "No space left on device", "out/loss.png"), 1, "error: out/loss.png: no space left on the device"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (cut_short_import(), 130, "interrupted"),  # a Ctrl-C inside a compiled module's start-up
])
def test_error_boundary_prints_one_line(capsys, error, code, line):
    def main():
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli.run(main)
    assert exit_.value.code == code
    err = capsys.readouterr().err
    assert line in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(type(error)):
        cli.run(main, debug=True)  # --debug: the traceback, as raised


def test_flag_errors_come_before_heavy_imports(tmp_path):
    """What a user waits for on a typo: no torch, transformers or peft is imported to report it."""
    code = ("import sys\nfrom glmtune.core import cli\nfrom glmtune.core.config import TrainConfig\ntry:\n"
            f"    cli.parse_args(TrainConfig, 't', ['--data', {str(tmp_path)!r}, '--lora-r', '0'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
    assert time.perf_counter() - began < 10


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


def readme() -> str:
    return (REPO / "README_chatglm_finetuning.md").read_text(encoding="utf-8")


def test_the_readme_links_every_docs_page_and_each_link_resolves():
    linked = re.findall(r"\]\((docs/[^)]+)\)", readme())
    assert sorted(linked) == sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))
    assert all((REPO / link).is_file() for link in linked)


def test_python_snippets_in_the_docs_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pages = [REPO / "README_chatglm_finetuning.md", *sorted((REPO / "docs").glob("*.md"))]
    snippets = [snippet for page in pages
                for snippet in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]
    assert snippets
    for snippet in snippets:
        exec(compile(snippet, "docs snippet", "exec"), {})


def test_ci_runs_the_readme_test_command():
    setup = re.search(r"```bash\n(.*?)```", readme(), flags=re.S).group(1)
    test_command = next(line for line in setup.splitlines() if "pytest" in line).split("#")[0].strip()
    assert test_command in (REPO / ".ci" / "run").read_text(encoding="utf-8")
