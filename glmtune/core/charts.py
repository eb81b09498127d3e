"""Figures written as PNG files: matplotlib without a display, a font for Chinese text, and an atomic save."""

from __future__ import annotations

import functools
import re
import sys
import warnings
from pathlib import Path

# Fonts with Chinese glyphs, preferred first. A .ttc collection holds several faces and matplotlib reads
# only its first, so Noto's and Source Han's collections appear under their JP or KR names.
CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Hiragino Sans GB", "Microsoft YaHei",
                "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "SimHei", "Noto Sans SC", "Noto Sans CJK JP",
                "Source Han Sans", "Noto Sans CJK KR", "Source Han Sans KR")
CJK_FILES = ("notosanscjk", "sourcehansans", "notosanssc", "pingfang", "hiragino", "msyh", "wqy", "simhei")
CJK_TEXT = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
NO_CJK_NOTE = ("note: no CJK font found; Chinese labels in the charts may show as boxes; "
               "install one (Debian/Ubuntu: apt-get install fonts-noto-cjk)")


@functools.cache
def cjk_family() -> str | None:
    """The installed font matplotlib should fall back to for Chinese characters, or None."""
    from matplotlib import font_manager

    manager = font_manager.fontManager
    known = {font.name for font in manager.ttflist}
    if not known.intersection(CJK_FAMILIES):
        # matplotlib lists the fonts once and caches the list: one installed since is only on disk
        for path in font_manager.findSystemFonts():
            if any(key in re.sub(r"[-_ ]", "", Path(path).name.lower()) for key in CJK_FILES):
                manager.addfont(path)
        known = {font.name for font in manager.ttflist}
    return next((family for family in CJK_FAMILIES if family in known), None)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    family = cjk_family()
    if family and family not in plt.rcParams["font.family"]:
        # a fallback after the usual fonts: latin text looks as before, a Chinese glyph comes from here
        plt.rcParams["font.family"] = [*plt.rcParams["font.family"], family]
    return plt


@functools.cache
def _note_no_cjk_font() -> None:
    print(NO_CJK_NOTE, file=sys.stderr, flush=True)


def save_png(fig, path: Path, dpi: int) -> None:
    """Render to a temporary file and rename, so a full disk never leaves a broken PNG."""
    from matplotlib.text import Text

    tofu = cjk_family() is None and any(CJK_TEXT.search(t.get_text()) for t in fig.findobj(Text))
    if tofu:
        _note_no_cjk_font()  # once, in place of matplotlib's warning per missing glyph
    scratch = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            if tofu:
                warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
            fig.savefig(scratch, dpi=dpi, format="png")
        scratch.replace(path)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from err
    finally:
        scratch.unlink(missing_ok=True)
        import matplotlib.pyplot as plt

        plt.close(fig)
