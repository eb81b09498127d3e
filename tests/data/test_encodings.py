"""Legacy encodings: Big5, GBK/GB18030 whose first bytes also read as UTF-8, UTF-16/32 with a BOM,
and a file no encoding clearly fits, each read as the text it was saved from or refused with how
to convert it."""

import codecs

import pytest

from glmtune.core.errors import DataError
from glmtune.data.reading import read_dataset


# Traditional Chinese, as Taiwan and Hong Kong write it (and save it as Big5)
TRADITIONAL = [
    "高血壓能喝咖啡嗎？ 男，50歲，血壓控制在130/80左右。,少量飲用一般可以，注意監測血壓，出現胸痛頭暈及時就醫。",
    "孩子發燒怎麼辦？ 孩子3歲，體溫38.5度一天。,多喝水，物理降溫；精神差或抽搐立即就醫。",
    "胃痛反酸是什麼原因？ 女，35歲，飯後明顯。,可能是胃食管反流，少食多餐，避免睡前進食，必要時做胃鏡。",
    "失眠怎麼調理？ 男，40歲，入睡困難兩個月。,規律作息，睡前少用手機，避免咖啡因；持續不緩解請到睡眠門診。",
]


def pairs(data):
    return [(ex.question, ex.answer) for ex in data.examples]


@pytest.mark.parametrize("lines", [TRADITIONAL, TRADITIONAL[1:2]], ids=["four lines", "one line"])
def test_big5_reads_back_as_the_text_it_was_saved_from(tmp_path, lines):
    text = "\n".join(lines) + "\n"
    (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
    (tmp_path / "big5.txt").write_bytes(text.encode("big5"))
    data = read_dataset(tmp_path / "big5.txt")
    assert pairs(data) == pairs(read_dataset(tmp_path / "utf8.txt")) and not data.skipped
    assert data.encoding == "Big5" and "(qa-lines, Big5)" in data.report_lines()[0]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030"])
def test_chinese_in_utf8_and_gb_encodings_still_reads_as_it_did(tmp_path, encoding):
    from conftest import LINES

    for lines in (LINES, TRADITIONAL):  # GBK holds traditional characters too
        text = "\n".join(lines) + "\n"
        (tmp_path / "utf8.txt").write_text(text, encoding="utf-8")
        (tmp_path / "data.txt").write_bytes(text.encode(encoding))
        assert pairs(read_dataset(tmp_path / "data.txt")) == pairs(read_dataset(tmp_path / "utf8.txt"))


def test_real_gb18030_data_reads_as_gb18030(realdata_dir, tmp_path):
    path = realdata_dir / "toyhom_internal_medicine_excerpt.gb18030.csv"
    as_utf8 = tmp_path / "excerpt.csv"
    as_utf8.write_text(path.read_bytes().decode("gb18030"), encoding="utf-8")
    data = read_dataset(path)
    assert data.encoding == "GB18030" and pairs(data) == pairs(read_dataset(as_utf8)) and len(data.examples) > 200
    edge = (realdata_dir / "edge_cases.txt").read_text(encoding="utf-8")
    (tmp_path / "edge.txt").write_bytes(edge.encode("gb18030"))
    (tmp_path / "edge.utf8.txt").write_text(edge, encoding="utf-8")
    assert pairs(read_dataset(tmp_path / "edge.txt")) == pairs(read_dataset(tmp_path / "edge.utf8.txt"))


def test_an_encoding_that_cannot_be_told_is_refused_with_how_to_convert(tmp_path):
    # EUC-KR hangul are GB2312 hanzi byte for byte: either reading is all common characters
    korean = tmp_path / "korean.txt"
    korean.write_bytes("두통이 심해요. 병원에 가야 하나요?,네, 바로 진료를 받으세요.\n".encode("euc_kr"))
    with pytest.raises(DataError, match=r"korean.txt: not UTF-8, and no legacy encoding clearly fits.*"
                                        r"likely GB18030 or CP949\): iconv -f ENCODING -t UTF-8 .*korean.txt > .*korean.txt.utf8"):
        read_dataset(korean)


@pytest.mark.parametrize("first", ["头痛？ 经常头痛怎么办", "楠宝发烧三天不退怎么办？ 楠宝2岁"])
def test_gbk_whose_first_characters_are_also_utf8_is_read_as_gbk(tmp_path, first):
    # 头痛 in GBK (CD B7 CD B4) are two valid UTF-8 characters (Greek), 楠宝 one CJK character and more
    lines = f"{first},注意休息。\n胃痛反酸是什么原因？ 饭后明显,少食多餐。\n"
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes(lines.encode("gbk"))
    data = read_dataset(gbk)
    assert data.encoding == "GB18030" and [ex.answer for ex in data.examples] == ["注意休息。", "少食多餐。"]
    damaged = tmp_path / "damaged.txt"  # Chinese in UTF-8, then one byte that is not: still named as damage
    damaged.write_bytes(lines.encode("utf-8") + b"\xa3\n")
    with pytest.raises(DataError, match=r"damaged.txt:3: invalid UTF-8 byte 0xa3 after valid UTF-8 text"):
        read_dataset(damaged)


def test_utf16_and_utf32_with_their_bom_are_read(tmp_path):
    text = "头痛怎么办？ 经常头痛,注意休息。\n"
    for encoding, name, mark in (("utf-16", "UTF-16", b""), ("utf-16-be", "UTF-16", codecs.BOM_UTF16_BE),
                                 ("utf-32", "UTF-32", b"")):  # UTF-32's mark begins with UTF-16's
        path = tmp_path / f"{encoding}.txt"
        path.write_bytes(mark + text.encode(encoding))
        data = read_dataset(path)
        assert (data.encoding, data.lines_read, [ex.answer for ex in data.examples]) == (name, 1, ["注意休息。"])
