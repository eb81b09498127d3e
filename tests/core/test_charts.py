"""Charts with Chinese text: drawn with an installed CJK font, or, with none, one clear note instead of a
warning per missing glyph."""

import warnings

import pytest

from glmtune.core import charts


def _chinese_figure(plt):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.bar(["心血管内科", "儿科"], [1, 2])
    ax.set_title("ROUGE-L 按科室")
    return fig


@pytest.mark.skipif(charts.cjk_family() is None, reason="no CJK font installed")
def test_chinese_labels_are_drawn_with_an_installed_cjk_font(tmp_path, capsys):
    plt = charts.pyplot()
    assert charts.cjk_family() in plt.rcParams["font.family"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        charts.save_png(_chinese_figure(plt), tmp_path / "c.png", 50)
    assert not [w for w in caught if "missing from" in str(w.message)]
    assert capsys.readouterr().err == ""


def test_without_a_cjk_font_one_note_replaces_the_glyph_warnings(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(charts, "cjk_family", lambda: None)
    charts._note_no_cjk_font.cache_clear()
    plt = charts.pyplot()
    with plt.rc_context({"font.family": ["DejaVu Sans"]}), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain, _ = plt.subplots(figsize=(3, 2))
        plain.suptitle("loss per step")
        charts.save_png(plain, tmp_path / "plain.png", 50)
        assert capsys.readouterr().err == ""  # no Chinese text, nothing to say
        for name in ("a.png", "b.png"):
            charts.save_png(_chinese_figure(plt), tmp_path / name, 50)
    assert capsys.readouterr().err == charts.NO_CJK_NOTE + "\n"  # once per process
    assert not [w for w in caught if "missing from" in str(w.message)]
    assert (tmp_path / "b.png").stat().st_size > 0
    charts._note_no_cjk_font.cache_clear()
