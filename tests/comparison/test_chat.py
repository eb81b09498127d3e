"""The chat (--chat): the conversation kept and trimmed to the context, sides switched, and lines from
a pipe answered one by one, escaped where they hold control characters or bytes that are not UTF-8."""

import io

import pytest

import glmtune
from glmtune.comparison.chat import start, talk
from glmtune.core.config import CompareConfig
from glmtune.core.errors import ConfigError
from glmtune.training.runs import RunRecord


def test_chat_keeps_the_conversation_and_switches_sides(trained):
    out, _ = trained
    config = CompareConfig(adapter=out, chat=True, max_new_tokens=8)
    config.validate()
    screen = io.StringIO()
    chat = start(config, RunRecord.load(out), "tiny", screen)
    tok, ask = chat.tokenizer, (lambda text: {"role": "user", "content": text})

    chat.handle("头痛怎么办？")
    assert chat.prompts[0] == glmtune.chat_ids(tok, [ask("头痛怎么办？")])
    first = chat.history[1]
    assert first["role"] == "assistant" and first["content"] and f"[fine-tuned] {first['content']}" in screen.getvalue()
    chat.handle("要吃什么药？")
    assert chat.prompts[1] == glmtune.chat_ids(tok, [ask("头痛怎么办？"), first, ask("要吃什么药？")])

    shown = len(screen.getvalue())
    chat.handle("/both")
    chat.handle("失眠呢？")
    both = screen.getvalue()[shown:]
    assert "(answering: base, then fine-tuned)" in both and both.index("[base] ") < both.index("[fine-tuned] ")
    assert chat.prompts[2][: len(chat.prompts[1])] == chat.prompts[1] and len(chat.history) == 6

    chat.handle("/reset")
    chat.handle("/base")
    shown = len(screen.getvalue())
    chat.handle("咳嗽")
    assert chat.prompts[3] == glmtune.chat_ids(tok, [ask("咳嗽")])  # the conversation was forgotten
    assert "[base] " in screen.getvalue()[shown:] and "[fine-tuned]" not in screen.getvalue()[shown:]
    chat.handle("/nope")
    assert screen.getvalue().endswith("(unknown command /nope; commands: /tuned, /base, /both, /reset, /exit)\n")
    assert chat.handle("/exit") is False


def test_chat_from_a_pipe_answers_each_line_with_the_conversation_so_far(trained):
    out, _ = trained
    screen = io.StringIO()
    chat = start(CompareConfig(adapter=out, chat=True, max_new_tokens=8), RunRecord.load(out), "tiny", screen)
    talk(chat, io.StringIO("头痛怎么办？\n\n要吃什么药？\n/exit\n还在吗？\n"))  # read as a pipe: not a terminal
    first, second = chat.prompts  # the empty line is skipped, nothing after /exit is read
    answer = chat.history[1]["content"]
    assert second == glmtune.chat_ids(chat.tokenizer, [{"role": "user", "content": "头痛怎么办？"},
                                                       {"role": "assistant", "content": answer},
                                                       {"role": "user", "content": "要吃什么药？"}])
    assert second[: len(first)] == first
    assert screen.getvalue().count("[fine-tuned] ") == 2 and "> 还在吗？" not in screen.getvalue()


def test_chat_drops_the_oldest_exchanges_and_refuses_what_cannot_fit(trained):
    out, _ = trained
    screen = io.StringIO()
    chat = start(CompareConfig(adapter=out, chat=True, max_new_tokens=8), RunRecord.load(out), "tiny", screen)
    for question in ("头痛怎么办？", "要吃什么药？"):
        chat.handle(question)
    assert len(chat.history) == 4
    chat.max_positions = len(chat.prompts[-1]) + 8 + 4  # room for the last exchange, not for both
    chat.handle("还要注意什么？")
    assert "(1 oldest exchange(s) dropped to fit the context)" in screen.getvalue()
    assert [m["content"] for m in chat.history[::2]] == ["要吃什么药？", "还要注意什么？"]
    before = len(chat.prompts)
    chat.handle("头痛" * 500)
    assert "context holds" in screen.getvalue().splitlines()[-1] and len(chat.prompts) == before
    chat.handle("\udcff\udcfe头痛")  # GBK bytes read as UTF-8 with surrogate escapes
    assert screen.getvalue().splitlines()[-1].startswith("(this line is not UTF-8 text; skipped.")
    assert len(chat.prompts) == before


def test_chat_refuses_prompts_and_data(trained, data_file):
    out, _ = trained
    with pytest.raises(ConfigError, match="without --prompt or --data"):
        CompareConfig(adapter=out, chat=True, prompt=["头痛"]).validate()
    with pytest.raises(ConfigError, match="without --prompt or --data"):
        CompareConfig(adapter=out, chat=True, data=data_file).validate()


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
