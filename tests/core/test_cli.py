"""The command line: flags from the config dataclasses, HF-style spellings, --config YAML (hostile
files refused at once), the one-line error boundary, and a console whose reader has gone."""

import os
import subprocess
import sys
import time

import pytest

from glmtune.core import cli
from glmtune.core.config import CompareConfig, TrainConfig
from glmtune.core.errors import ConfigError, DataError, RunDirError

from conftest import TORCH_FULL_DISK


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


# 90 bytes that expand to 9**9 strings inside a setting whose error message would show the value
BILLION_LAUGHS = "lora_target:\n- &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"- &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


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


def test_a_console_whose_reader_has_gone_swallows_the_rest(tmp_path):
    read, write = os.pipe()
    console = cli.Console(open(write, "wb"), encoding="ascii", errors="backslashreplace", line_buffering=True)
    console.write("高血压\n")
    assert os.read(read, 100) == b"\\u9ad8\\u8840\\u538b\n"  # escaped, not UnicodeEncodeError
    os.close(read)  # `head -1` has read its line and exited
    console.write("step 2 of 8\n")  # EPIPE: from now on the output goes nowhere, and the run goes on
    console.write("step 3 of 8\n")
    console.close()  # the flush at exit succeeds too (its failure would make the exit status 120)


@pytest.mark.parametrize("error, line", [
    (RuntimeError(TORCH_FULL_DISK), "error: a write failed: the disk is full or failing; free some space"),
    (OSError(122, "Disk quota exceeded", "out/eval.txt"), "error: out/eval.txt: no space left on the device"),
    (OSError(30, "Read-only file system", "ro/out"), "error: ro/out: read-only file system; choose a folder you can"),
])
def test_write_failures_of_any_library_are_one_line(capsys, error, line):
    def main():
        raise error

    with pytest.raises(SystemExit) as exit_:
        cli.run(main)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and line in err and len(err.strip().splitlines()) == 1

    def bug():
        raise RuntimeError("shape mismatch in my code")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        cli.run(bug)  # not a write failure: a bug keeps its traceback
