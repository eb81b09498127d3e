"""Faults a real user hits — kills, corrupt files, a full disk, odd text — each ending in one clear
error or the right behaviour, never a lost run. Tests named `test_item_N_...` pin item N of the
reliability issue; the rest are further probes of the same kinds."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import glmtune
from glmtune.core import cli
from glmtune.comparison.job import compare
from glmtune.core.config import CompareConfig
from glmtune.data.reading import read_dataset
from glmtune.core.errors import DataError, Interrupted, ModelLoadError, RunDirError, TrainingError
from glmtune.training.job import train
from glmtune.training.runs import RunRecord, checkpoints, last_checkpoint

from conftest import KillAtStep, tiny_config

FLAGS = ("--max-steps", "4", "--save-steps", "2", "--learning-rate", "5e-3")
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch.save, disk full


def compare_config(adapter, *extra):
    config, _ = cli.parse_args(CompareConfig, "test", ["--adapter", str(adapter), "--max-new-tokens", "4",
                                                       "--num-samples", "2", "--no-perplexity", *extra])
    return config


def copy_run(trained, tmp_path) -> Path:
    out, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy


def test_item_2_resume_of_a_run_killed_before_its_first_checkpoint(data_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, out, *FLAGS), callbacks=[KillAtStep(1)])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a failed run gives Ctrl-C back
    assert checkpoints(out) == [] and RunRecord.load(out).state == "running"
    job = train(tiny_config(data_file, out, *FLAGS, "--resume"))  # starts at step 0: nothing was saved
    assert job.trainer.state.global_step == 4 and RunRecord.load(out).state == "finished"


def test_item_3_a_checkpoint_cut_short_is_never_resumed_from(data_file, tmp_path):
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


def test_item_4_a_kill_before_the_run_record_does_not_block_the_rerun(data_file, tmp_path):
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
def test_item_6_a_damaged_run_record_is_one_clear_error(data_file, trained, tmp_path, damage):
    run = copy_run(trained, tmp_path)
    (run / "run_config.json").write_text(damage)
    with pytest.raises(RunDirError, match=r"run_config.json is damaged.*--output-dir"):
        train(tiny_config(data_file, run, "--max-steps", "12", "--learning-rate", "5e-3", "--resume"))
    with pytest.raises(RunDirError, match=r"run_config.json is damaged"):
        compare(compare_config(run))


@pytest.mark.parametrize("name, damage, message", [
    ("adapter_model.safetensors", lambda b: b[: len(b) // 2], "adapter_model.safetensors is damaged"),
    ("adapter_model.safetensors", lambda b: b"", "adapter_model.safetensors is damaged"),
    ("adapter_config.json", lambda b: b[:20], "adapter_config.json is damaged"),
    ("adapter_config.json", lambda b: json.dumps({**json.loads(b), "r": "16"}).encode(),
     "adapter_config.json holds a setting peft cannot use"),
    ("tokenizer.json", lambda b: b[:1000], "tokenizer.json or tokenizer_config.json is damaged"),
    ("tokenizer_config.json", lambda b: b"[]", "tokenizer.json or tokenizer_config.json is damaged"),
    # valid, but names fewer modules than were trained: peft would drop the rest without a word
    ("adapter_config.json", lambda b: json.dumps({**json.loads(b), "target_modules": ["q_proj"]}).encode(),
     "holds .* weights that .*adapter_config.json does not name"),
])
def test_item_7_a_damaged_adapter_folder_is_named(trained, tmp_path, name, damage, message):
    run = copy_run(trained, tmp_path)
    path = run / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ModelLoadError, match=message):
        compare(compare_config(run))


def test_item_8_a_lone_surrogate_skips_its_record_with_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "头痛？", "answer": "休息。"}\n'
                    '{"question": "发烧 \\ud83d 怎么办？", "answer": "多喝水。"}\n'
                    '{"question": "咳嗽？", "answer": "止咳 \\udc00。"}\n'
                    '{"question": "失眠？", "answer": "规律作息 \\ud83d\\ude00。"}\n', encoding="utf-8")
    data = read_dataset(path)
    assert [ex.line_no for ex in data.examples] == [1, 4] and data.examples[1].answer == "规律作息 😀。"
    assert [(s.line_no, s.reason.split(" at ")[0]) for s in data.skipped] == [
        (2, "lone surrogate '\\ud83d'"), (3, "lone surrogate '\\udc00'")]
    tok = glmtune.load_tokenizer("tiny")
    assert all(tok(ex.question + ex.answer).input_ids for ex in data.examples)


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


def test_item_9_disk_full_at_a_checkpoint_drops_it_and_resume_continues(data_file, tmp_path, monkeypatch):
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
def test_item_9_disk_full_at_the_final_save_keeps_the_last_checkpoint(data_file, tmp_path, monkeypatch, logging):
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


@pytest.mark.parametrize("error, line", [
    (RuntimeError(TORCH_FULL_DISK), "error: a write failed: the disk is full or failing; free some space"),
    (OSError(122, "Disk quota exceeded", "out/eval.txt"), "error: out/eval.txt: no space left on the device"),
    (OSError(30, "Read-only file system", "ro/out"), "error: ro/out: read-only file system; choose a folder you can"),
])
def test_item_9_write_failures_of_any_library_are_one_line(capsys, error, line):
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


def test_item_9_comparison_scores_before_it_writes_and_writes_whole(trained, tmp_path, monkeypatch):
    from glmtune.comparison.job import Comparison
    from glmtune.comparison.scoring import summary_lines

    run = copy_run(trained, tmp_path)
    folder = tmp_path / "cmp"
    job = Comparison(compare_config(run, "--output", str(folder)))
    trained_run = job.load_run()
    prompts = job.load_prompts(trained_run)
    loaded = job.load_model(trained_run, prompts)
    report = job.score(trained_run, prompts, loaded, job.generate(loaded))
    summary = summary_lines(report.aggregate, report.timing, prompts.notes)
    assert summary[0].startswith("VERDICT") and not list(folder.glob("chatglm_comparison.*"))  # before any file

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", full)
    with pytest.raises(OSError) as failed, job:
        job.write(report, summary)
    assert failed.value.filename.endswith("chatglm_comparison.png") and failed.value.errno == 28
    assert list(tmp_path.iterdir()) == [run]  # no report, half a report or scratch left behind


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


def test_item_9_a_real_full_disk(data_file, small_disk):
    out = small_disk / "run"
    with pytest.raises(TrainingError, match=r"could not write a checkpoint.*(no space left|full).*checkpoint-2"):
        train(tiny_config(data_file, out, *FLAGS), callbacks=[FillDiskAfterFirstSave(small_disk)])
    assert checkpoints(out) == [out / "checkpoint-2"]
    (small_disk / "filler").unlink()
    assert train(tiny_config(data_file, out, *FLAGS, "--resume")).trainer.state.global_step == 4


def test_item_10_a_model_folder_without_its_tokenizer_can_be_fixed_and_rerun(data_file, tiny_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "tokenizer.model").rename(tmp_path / "tokenizer.model")
    out = tmp_path / "run"
    config = tiny_config(data_file, out, "--max-steps", "1")
    config.model = str(model)
    with pytest.raises(ModelLoadError, match=r"no tokenizer.model .*copy tokenizer.model into it"):
        train(config)
    (tmp_path / "tokenizer.model").rename(model / "tokenizer.model")
    assert train(config).trainer.state.global_step == 1  # the same command, once the folder is fixed


def test_item_13_duplicates_are_reported_by_line(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("头痛？ 两天,休息。\n发烧？ 一天,喝水。\n头痛？ 两天,休息。\n咳嗽？ 一周,就医。\n头痛？ 两天,休息。\n",
                    encoding="utf-8")
    data = read_dataset(path)
    assert data.duplicates == [(3, 1), (5, 1)] and data.duplicates_removed == 2
    assert "duplicates removed: 2 (lines 3, 5)" in "\n".join(data.report_lines())
    assert "line 5: duplicate of line 1" in data.skipped_report()
    assert glmtune.parse_line("头痛？ 两天,休息。") == ("头痛？两天", "休息。")


# --- further probes of the same kinds ---------------------------------------------------------


def test_overwrite_never_costs_a_finished_run_for_bad_input(data_file, trained, tmp_path, tiny_dir):
    run = copy_run(trained, tmp_path)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="neither UTF-8 nor GB18030"):
        train(tiny_config(binary, run, "--overwrite"))
    no_tokenizer = tmp_path / "model"
    shutil.copytree(tiny_dir, no_tokenizer)
    (no_tokenizer / "tokenizer.model").unlink()
    config = tiny_config(data_file, run, "--overwrite")
    config.model = str(no_tokenizer)
    with pytest.raises(ModelLoadError, match="no tokenizer.model"):
        train(config)
    assert RunRecord.load(run).state == "finished" and (run / "adapter_model.safetensors").is_file()


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


def test_bare_cr_line_endings_are_lines_and_a_stray_cr_is_not(tmp_path):
    path = tmp_path / "mac.txt"
    path.write_bytes("头痛？ 两天,休息。\r发烧？ 一天,喝水。\r咳嗽？ 一周,就医。\r".encode())
    data = read_dataset(path)
    assert data.lines_read == 3 and [ex.answer for ex in data.examples] == ["休息。", "喝水。", "就医。"]
    path.write_bytes("高血压能喝咖啡吗？ 男，50岁,少量饮用\r一般可以。\r\n失眠？ 两个月,规律作息。\n".encode())
    data = read_dataset(path)  # a CR inside a line of an LF file belongs to its record
    assert data.lines_read == 2 and [ex.answer for ex in data.examples] == ["少量饮用\n一般可以。", "规律作息。"]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"question": ' + "9" * 5000 + ', "answer": "x"}'])
def test_unreadable_json_names_the_line(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text('{"question": "头痛？", "answer": "休息。"}\n' + text + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"data.jsonl:2: JSON that cannot be read"):
        read_dataset(path)


@pytest.mark.parametrize("terms, message", [("头痛\n\n发烧\n", "terms.txt:2: blank line"),
                                            ("头痛".encode("utf-16"), "not UTF-8 text")])
def test_a_bad_terms_file_stops_before_any_model_loads(trained, tmp_path, terms, message):
    from glmtune.comparison.job import Comparison

    path = tmp_path / "terms.txt"
    path.write_bytes(terms.encode() if isinstance(terms, str) else terms)
    job = Comparison(compare_config(trained[0], "--terms-file", str(path)))
    with pytest.raises(DataError, match=message):
        job.load_run()


def test_a_diverging_run_shorter_than_the_logging_interval_is_not_finished(data_file, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="NaN/inf"):
        train(tiny_config(data_file, out, "--max-steps", "2", "--logging-steps", "5", "--learning-rate", "1e30"))
    assert RunRecord.load(out).state == "running" and not (out / "adapter_model.safetensors").exists()


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


def test_retraining_over_a_run_names_the_reports_overwrite_would_delete(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "comparison").mkdir()
    (run / "comparison-2").mkdir()
    with pytest.raises(RunDirError, match=r"replaces it \(and its comparison reports comparison, comparison-2\)"):
        train(tiny_config(data_file, run, "--learning-rate", "5e-3", "--max-steps", "12"))
