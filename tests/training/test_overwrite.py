"""--overwrite deletes only what the run wrote, and a run folder takes another run only where nothing
of value is lost: a user's files, a report, the data trained on, another run's checkpoint."""

import errno
import json
import os
import shutil

import pytest

from glmtune.core.errors import DataError, ModelLoadError, RunDirError
from glmtune.training.job import train
from glmtune.training.runs import RUN_CONFIG, RunRecord

from conftest import REPORT, KillAtStep, copy_run, earlier_report, quick, tiny_config


def test_overwrite_keeps_what_the_tool_did_not_write(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "README.md").write_text("why lr 1e-4", encoding="utf-8")  # the name peft's model card took
    (run / "merged").mkdir()
    (run / "merged" / "model.safetensors").write_bytes(b"an export")
    (run / "comparison").mkdir()
    for name in REPORT:
        (run / "comparison" / name).write_text("old report", encoding="utf-8")
    (run / "comparison" / "reading.txt").write_text("my notes on the report", encoding="utf-8")
    shutil.copyfile(data_file, run / "mydata.txt")  # trained on a file kept in the run folder

    job = train(quick(run / "mydata.txt", run, "--overwrite"))

    assert (run / "README.md").read_text(encoding="utf-8") == "why lr 1e-4"
    assert (run / "merged" / "model.safetensors").read_bytes() == b"an export"
    assert (run / "mydata.txt").read_bytes() == data_file.read_bytes()
    assert sorted(p.name for p in (run / "comparison").iterdir()) == sorted([*REPORT, "reading.txt"])  # annotated
    record = RunRecord.load(run)
    assert record.state == "finished" and record.data_sha256 and job.trainer.state.global_step == 1
    assert "kept README.md, comparison, merged and 1 more (not written by this tool)" in job.plan_summary


def test_overwrite_refuses_to_delete_the_data_file_it_trains_on(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    split = run / RunRecord.load(run).resolved.eval_file
    with pytest.raises(RunDirError, match=rf"--overwrite would delete {split}, and --data {split} is \(in\) it"):
        train(quick(split, run, "--overwrite"))
    assert sorted(p.name for p in run.iterdir()) == before


def test_overwrite_refuses_a_users_file_where_the_run_writes(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    record = json.loads((run / RUN_CONFIG).read_text(encoding="utf-8"))
    record["files"].remove("loss.png")  # as if the user had put their own loss.png there
    (run / RUN_CONFIG).write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(RunDirError, match=r"holds loss.png, which this tool did not write \(or which changed since\) "
                                          "and the new run would write over"):
        train(quick(data_file, run, "--overwrite"))
    assert (run / "loss.png").is_file() and (run / "adapter_model.safetensors").is_file()


def stamp_of_another_run(run):
    (run / "checkpoint-99").mkdir()
    (run / "checkpoint-99" / "glmtune_run.json").write_text('{"lora_r": 4}', encoding="utf-8")


@pytest.mark.parametrize("name, setup", [
    ("checkpoint-7", lambda run: (run / "checkpoint-7").mkdir() or (run / "checkpoint-7" / "notes.txt").write_text("x")),
    ("checkpoint-99", stamp_of_another_run),
    ("data_report.txt", lambda run: (run / "data_report.txt").write_text("my review of this data")),
], ids=["a user's folder named like a checkpoint", "another run's checkpoint", "a run's file edited since"])
def test_overwrite_refuses_what_only_looks_like_the_runs_own(data_file, trained, tmp_path, name, setup):
    run = copy_run(trained, tmp_path)
    setup(run)
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(RunDirError, match=f"holds {name}, which this tool did not write \\(or which changed since\\)"):
        train(quick(data_file, run, "--overwrite"))
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("user_file", ["comparison/.notes.md", "comparison/chatglm_comparison.archive/mine.txt"])
def test_a_report_folder_holding_a_users_file_is_kept_whole(data_file, trained, tmp_path, user_file):
    run = copy_run(trained, tmp_path)
    earlier_report(run)
    (run / user_file).parent.mkdir(exist_ok=True)
    (run / user_file).write_text("mine", encoding="utf-8")
    job = train(quick(data_file, run, "--overwrite"))
    assert (run / user_file).read_text(encoding="utf-8") == "mine" and (run / "comparison" / REPORT[0]).is_file()
    assert "kept comparison (not written by this tool)" in job.plan_summary


def test_overwrite_that_cannot_remove_a_file_deletes_nothing(data_file, trained, tmp_path, monkeypatch):
    run = copy_run(trained, tmp_path)
    before = sorted(p.name for p in run.iterdir())
    rename = os.rename

    def immutable(src, dst):
        if str(src).endswith("train_prompts.sha256"):
            raise PermissionError(errno.EPERM, "Operation not permitted", str(src))
        rename(src, dst)

    monkeypatch.setattr("glmtune.core.folders.os.rename", immutable)
    with pytest.raises(RunDirError, match=r"cannot remove .*train_prompts.sha256 \(Operation not permitted\); nothing "
                                          "was deleted"):
        train(quick(data_file, run, "--overwrite"))
    assert sorted(p.name for p in run.iterdir()) == before and RunRecord.load(run).state == "finished"


@pytest.mark.parametrize("make", [lambda c: c.write_text("not a folder"),
                                  lambda c: c.mkdir() or (c / "results.json").write_text("{}")],
                         ids=["a file", "a folder of other files"])
def test_a_users_checkpoint_named_entry_is_never_cleared_as_cut_short(tmp_path, make):
    from glmtune.training.runs import clear_leftovers

    make(tmp_path / "checkpoint-7")
    with pytest.raises(RunDirError, match="checkpoint-7 is not a checkpoint of this tool's"):
        clear_leftovers(tmp_path)
    assert (tmp_path / "checkpoint-7").exists()


def test_leftovers_that_are_links_are_unlinked_not_followed(tmp_path):
    from glmtune.training.runs import clear_leftovers

    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".x.tmp").symlink_to(data, target_is_directory=True)
    (run / "checkpoint-9").symlink_to(data, target_is_directory=True)
    assert clear_leftovers(run) == ["removed .x.tmp (scratch)", "removed checkpoint-9 (cut short)"]
    assert list(run.iterdir()) == [] and (data / "keep.txt").read_text() == "keep"


def test_a_link_in_the_run_folder_to_the_data_is_unlinked_and_the_data_kept(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    data = tmp_path / "data.txt"
    shutil.copyfile(data_file, data)
    (run / "eval.jsonl").unlink()
    (run / "eval.jsonl").symlink_to(data)
    train(quick(data, run, "--overwrite"))
    assert data.read_bytes() == data_file.read_bytes() and not (run / "eval.jsonl").is_symlink()


def test_a_symlinked_output_dir_is_overwritten_through_the_link(data_file, trained, tmp_path):
    real = copy_run(trained, tmp_path, "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    train(quick(data_file, link, "--overwrite"))
    assert link.is_symlink() and RunRecord.load(real).config.max_steps == 1


def test_a_run_stopped_before_its_first_checkpoint_gives_way_to_other_settings(data_file, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(quick(data_file, run, "--max-steps", "2"), callbacks=[KillAtStep(1)])
    (run / "NOTES.md").write_text("mine", encoding="utf-8")
    job = train(quick(data_file, run, "--lora-r", "4"))  # e.g. the --max-length a refusal asked for
    assert "replaced a run that stopped before its first checkpoint (lora_r 16 -> 4" in job.plan_summary
    assert RunRecord.load(run).state == "finished" and (run / "NOTES.md").read_text(encoding="utf-8") == "mine"


def test_resume_from_a_checkpoint_of_another_run_is_refused(data_file, tmp_path):
    other = tmp_path / "other"
    train(tiny_config(data_file, other, "--max-steps", "2", "--save-steps", "1", "--lora-r", "4"))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5"), callbacks=[KillAtStep(1)])
    foreign = other / "checkpoint-1"
    with pytest.raises(RunDirError, match=rf"{foreign} is a checkpoint of another run \(lora_r 4 -> 16\)"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(foreign)))
    (foreign / "glmtune_run.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(RunDirError, match="glmtune_run.json is damaged \\(not a JSON object\\)"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(foreign)))
    with pytest.raises(RunDirError, match=f"{run} is a run folder, not a checkpoint: --resume alone"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(run)))
    (foreign / "glmtune_run.json").unlink()  # an unmarked checkpoint from elsewhere: cannot be told apart
    with pytest.raises(RunDirError, match="does not say which run wrote it"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume", str(foreign)))
    shutil.copytree(foreign, run / "checkpoint-1")  # unmarked, in the run's own folder: its adapter still tells
    with pytest.raises(RunDirError, match=r"checkpoint-1 holds another run's adapter \(rank 4 \(this run: 16\)\)"):
        train(tiny_config(data_file, run, "--max-steps", "2", "--save-steps", "5", "--resume"))
    assert RunRecord.load(run).state == "running" and not (run / "adapter_model.safetensors").exists()


def test_overwrite_of_a_folder_without_a_run_record_deletes_nothing(data_file, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.md").write_text("my notes")  # names a run writes (or an earlier version's), but no run wrote them
    (folder / "eval.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"holds files that are not a run of this tool \(README.md, eval.txt\)"):
        train(quick(data_file, folder, "--overwrite"))
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "eval.txt"]


def test_a_run_with_a_damaged_checkpoint_does_not_give_way_to_other_settings(data_file, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data_file, run, "--max-steps", "3", "--save-steps", "1"), callbacks=[KillAtStep(2)])
    optimizer = run / "checkpoint-1" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # damaged since: trained weights all the same
    with pytest.raises(RunDirError, match=r"already holds another run \(lora_r 16 -> 4\)"):
        train(tiny_config(data_file, run, "--max-steps", "3", "--save-steps", "1", "--lora-r", "4"))
    assert (run / "checkpoint-1" / "adapter_model.safetensors").is_file()


def test_an_overwrite_killed_while_deleting_is_finished_by_the_next(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    left = run / f".replacing-{os.getpid()}"  # as a kill leaves it, by a process with this one's pid (containers)
    left.mkdir()
    (left / "checkpoint-12").mkdir()
    train(quick(data_file, run, "--overwrite"))
    assert not left.exists() and RunRecord.load(run).config.max_steps == 1


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


def test_retraining_over_a_run_names_the_reports_overwrite_would_delete(data_file, trained, tmp_path):
    run = copy_run(trained, tmp_path)
    (run / "comparison").mkdir()
    (run / "comparison-2").mkdir()
    with pytest.raises(RunDirError, match=r"replaces it \(and its comparison reports comparison, comparison-2\)"):
        train(tiny_config(data_file, run, "--learning-rate", "5e-3", "--max-steps", "12"))
