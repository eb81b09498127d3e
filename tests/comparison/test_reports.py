"""Report folders: numbered past what is there, never a link followed or a user's file swapped away,
and published whole or not at all (scored before anything is written, an overwrite killed or failed
leaves the earlier report)."""

import pytest

from glmtune.comparison.job import Comparison, compare
from glmtune.core.config import CompareConfig
from glmtune.core.errors import ConfigError

from conftest import REPORT, compare_config, copy_run, earlier_report


def test_a_comparison_killed_while_writing_its_overwrite_leaves_the_old_report_whole(trained, tmp_path,
                                                                                       monkeypatch):
    run = copy_run(trained, tmp_path)
    earlier_report(run)
    old = {name: (run / "comparison" / name).read_bytes() for name in REPORT}

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("glmtune.comparison.plots.plot_aggregate", killed)  # the log and JSON are written by then
    with pytest.raises(KeyboardInterrupt):
        compare(CompareConfig(adapter=run, max_new_tokens=3, num_samples=2, overwrite=True))
    assert {name: (run / "comparison" / name).read_bytes() for name in REPORT} == old
    assert sorted(p.name for p in run.iterdir() if p.name.startswith((".comparison", "comparison"))) == \
        ["comparison"]


def test_a_failed_comparison_leaves_no_numbered_folder(trained, tmp_path, monkeypatch):
    run = copy_run(trained, tmp_path)
    earlier_report(run)

    def out_of_memory(*args):
        raise MemoryError

    monkeypatch.setattr(Comparison, "generate", out_of_memory)
    with pytest.raises(MemoryError):
        compare(CompareConfig(adapter=run, max_new_tokens=2, num_samples=1))
    assert sorted(p.name for p in run.iterdir() if "comparison" in p.name) == ["comparison"]


def test_a_file_where_the_default_report_folder_goes_is_numbered_past(trained, tmp_path):
    from glmtune.comparison.job import output_dir

    run = copy_run(trained, tmp_path)
    (run / "comparison").write_text("a user's file")
    target, _, held = output_dir(CompareConfig(adapter=run))
    held.release()
    assert target == run / "comparison-2"


def test_comparison_overwrite_refuses_a_hidden_user_file(trained, tmp_path):
    from glmtune.comparison.job import output_dir

    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "chatglm_comparison.log").write_text("old")
    (folder / ".notes.md").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files that are not a comparison report \(.notes.md\)"):
        output_dir(CompareConfig(adapter=trained[0], output=folder, overwrite=True))


def test_a_file_put_in_the_report_folder_while_the_models_ran_is_never_swapped_away(trained, tmp_path, monkeypatch,
                                                                                    capsys):
    import glmtune.comparison.scoring

    folder = tmp_path / "report"
    folder.mkdir()  # an empty folder, reserved: the user writes into it during generation
    write_log = glmtune.comparison.scoring.write_log

    def user_writes_first(*args, **kwargs):
        (folder / "draft.md").write_text("my notes", encoding="utf-8")
        write_log(*args, **kwargs)

    monkeypatch.setattr(glmtune.comparison.scoring, "write_log", user_writes_first)
    job = compare(CompareConfig(adapter=trained[0], output=folder, max_new_tokens=2, num_samples=1))
    assert [p.name for p in folder.iterdir()] == ["draft.md"] and job.output == tmp_path / "report-2"
    assert sorted(p.name for p in job.output.iterdir()) == sorted(REPORT)
    assert f"{folder} gained files while the comparison ran; the report goes to {job.output}" in capsys.readouterr().out


def test_reports_never_follow_a_link_or_replace_a_file_in_the_run_folder(trained, tmp_path):
    from glmtune.comparison.job import output_dir

    run = copy_run(trained, tmp_path)
    thesis = tmp_path / "thesis.txt"
    thesis.write_text("years of work")
    (run / "comparison").symlink_to(thesis)
    target, _, held = output_dir(CompareConfig(adapter=run))
    held.release()
    assert target == run / "comparison-2"
    with pytest.raises(ConfigError, match="comparison is a file; choose a folder"):
        output_dir(CompareConfig(adapter=run, overwrite=True))
    assert thesis.read_text() == "years of work"


def test_a_comparison_scores_before_it_writes_and_writes_whole(trained, tmp_path, monkeypatch):
    from glmtune.comparison.job import Comparison
    from glmtune.comparison.scoring import summary_lines

    run = copy_run(trained, tmp_path)
    folder = tmp_path / "cmp"
    job = Comparison(compare_config(run, "--output", str(folder)))
    trained_run = job.load_run()
    prompts = job.load_prompts(trained_run)
    loaded = job.load_model(trained_run, prompts, None)
    report = job.score(trained_run, prompts, loaded, job.generate(loaded, None), None)
    summary = summary_lines(report.aggregate, report.timing, prompts.notes)
    assert summary[0].startswith("VERDICT") and not list(folder.glob("chatglm_comparison.*"))  # before any file

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", full)
    with pytest.raises(OSError) as failed, job:
        job.write(report, summary)
    assert failed.value.filename.endswith("chatglm_comparison.png") and failed.value.errno == 28
    assert list(tmp_path.iterdir()) == [run]  # no report, half a report or scratch left behind
