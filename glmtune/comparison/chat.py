"""Talk with the fine-tuned model: ChatGLM3's native chat layout, streamed token by token, with the
conversation so far in every prompt.

Commands: /tuned and /base switch the side that answers, /both answers with both (base first; the
conversation keeps the fine-tuned answer), /reset forgets the conversation, /exit (or end of input)
ends. Ctrl-C stops the turn being answered (it is not kept) or clears the line being typed. On a
terminal it prompts with "> "; from a pipe it reads one user turn per line and echoes it, so the
transcript reads as a conversation.

Both sides stay available, so the adapter is never merged here: the weights are held as the
comparison would hold them (16-bit where memory allows, else NF4) with the adapter attached, and
the base answers with it disabled.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import TextIO

import torch
from transformers import TextStreamer

from ..core import device
from .generation import Decoding
from ..core.terminal import printable
from ..model.prompts import chat_ids
from ..model.tokenizer import stop_token_ids

COMMANDS = "/tuned, /base, /both, /reset, /exit"
LABELS = {"base": "base", "tuned": "fine-tuned"}


class StreamTo(TextStreamer):
    """transformers' word-safe incremental decoding, written to `out` with control characters
    escaped (an answer cannot recolour the terminal); the reply's leading newline is dropped."""

    def __init__(self, tokenizer, out: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out, self.started = out, False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        self.out.write(printable(text, keep="\n\t") + ("\n" if stream_end else ""))
        self.out.flush()


class Chat:
    """A conversation with one model whose adapter can be switched off (`inference.Sides`, unmerged)."""

    def __init__(self, sides, tokenizer, decoding: Decoding, out: TextIO, max_positions: int):
        self.sides, self.tokenizer, self.decoding, self.out = sides, tokenizer, decoding, out
        self.max_positions = max_positions
        self.side = "tuned"  # or "base", "both"
        self.history: list[dict] = []
        self.prompts: list[list[int]] = []  # every prompt given to the model, in order

    def handle(self, line: str) -> bool:
        """One line of input; False when the conversation is over."""
        text = line.strip()
        if not text:
            return True
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that were not UTF-8 (a GBK file piped in) arrive as lone surrogates
            self.say("(this line is not UTF-8 text; skipped. Save the questions as UTF-8, or set the terminal to "
                     "UTF-8)")
            return True
        if text == "/exit":
            return False
        if text == "/reset":
            self.history = []
            self.say("(conversation cleared)")
        elif text in ("/base", "/tuned", "/both"):
            self.side = text[1:]
            self.say(f"(answering: {'base, then fine-tuned' if self.side == 'both' else LABELS[self.side]})")
        elif text.startswith("/"):
            self.say(f"(unknown command {text}; commands: {COMMANDS})")
        else:
            self.answer(text)
        return True

    def answer(self, text: str) -> None:
        """Both or one side's reply to `text`, after the conversation so far (its oldest exchanges
        dropped where the context is full). Kept in the conversation only when no reply was stopped."""
        turn = {"role": "user", "content": text}
        messages = [*self.history, turn]
        ids = chat_ids(self.tokenizer, messages)
        room = self.max_positions - self.decoding.max_new_tokens
        while len(ids) > room and len(messages) > 1:
            messages = messages[2:]
            ids = chat_ids(self.tokenizer, messages)
        if len(ids) > room:
            self.say(f"(this message is {len(ids)} tokens; with --max-new-tokens {self.decoding.max_new_tokens} the "
                     f"context holds {room}: shorten it)")
            return
        if len(messages) < len(self.history) + 1:
            self.say(f"({(len(self.history) + 1 - len(messages)) // 2} oldest exchange(s) dropped to fit the context)")
        self.prompts.append(ids)
        replies = {}
        for side in ("base", "tuned") if self.side == "both" else (self.side,):
            replies[side] = self.reply(side, ids)
            if replies[side] is None:
                return
        self.history = [*messages, {"role": "assistant", "content": replies.get("tuned", replies.get("base"))}]

    def reply(self, side: str, ids: list[int]) -> str | None:
        """Stream one side's answer; None if Ctrl-C stopped it."""
        self.out.write(f"[{LABELS[side]}] ")
        streamer = StreamTo(self.tokenizer, self.out)
        inputs = torch.tensor([ids], device=self.sides.model.device)
        torch.manual_seed(self.decoding.seed)  # the same draws for both sides of /both
        try:
            with self.sides.base_side() if side == "base" else contextlib.nullcontext(), torch.inference_mode():
                out = self.sides.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs),
                                                max_new_tokens=self.decoding.max_new_tokens, streamer=streamer,
                                                eos_token_id=stop_token_ids(self.tokenizer),
                                                pad_token_id=self.tokenizer.pad_token_id, **self.decoding.sampling())
        except KeyboardInterrupt:
            self.say("\n(stopped; this turn is not kept in the conversation)")
            return None
        except torch.OutOfMemoryError:
            device.empty_cache()
            self.say("\n(the GPU ran out of memory on this turn, which is not kept; /reset starts a shorter "
                     "conversation, or restart with a lower --max-new-tokens)")
            return None
        return self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def turns(stream: TextIO, out: TextIO) -> Iterator[str]:
    """User turns: typed at a "> " prompt on a terminal, or one per line from a pipe (echoed)."""
    interactive = stream is sys.stdin and stream.isatty()
    if isinstance(stream, io.TextIOWrapper):
        # Bytes that are not UTF-8 (a GBK file piped in) arrive as lone surrogates, which
        # `Chat.handle` answers with a line of its own, instead of an error that ends the chat.
        stream.reconfigure(errors="surrogateescape")
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                out.write("\n")
                return
            except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line typed so far, as shells do
                out.write("\n")
                continue
        else:
            line = stream.readline()
            if not line:
                return
            line = line.rstrip("\r\n")
            out.write(f"> {printable(line)}\n")  # a pipe's escape sequences are shown, not obeyed
        yield line


def start(config, run, base: str, out: TextIO) -> Chat:
    """The chat's model (as the comparison would hold the weights, adapter attached) and tokenizer,
    and the longest conversation that fits beside them (the model's context, unless memory is short)."""
    from .job import room_for_prompts
    from .inference import Sides, plan_chat
    from ..model.lora import adapter_parameters
    from ..model.placement import Shape
    from ..model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(config.adapter)
    context = tokenizer.model_max_length
    # One prompt at a time, the whole conversation prefilled each turn, up to the context length.
    room_for_prompts(context, config.max_new_tokens, len(chat_ids(tokenizer, [{"role": "user", "content": ""}])))
    plan, length = plan_chat(config.quantization, run.config.quantization, Shape.of_model(base),
                             device.free_memory(), context, config.max_new_tokens, device.cuda(),
                             adapter_parameters(config.adapter))
    sides = Sides.load(base, config.adapter, plan, keep_unmerged=True)
    decoding = Decoding(config.max_new_tokens, config.do_sample, config.temperature, config.top_p, config.seed)
    shortened = "" if length == context else f"; conversations kept to their last {length} tokens, what fits"
    out.write(f"weights: {plan.held('adapter attached and switched off for the base side')} ({plan.reason}"
              f"{shortened})\n")
    if run.resolved.prompt_format != "chat":
        out.write(f"note: this adapter was trained on the {run.resolved.prompt_format} layout; the chat uses "
                  "ChatGLM3's native chat layout, as a deployed model would\n")
    out.write(f"talking with the fine-tuned model; commands: {COMMANDS}\n")
    return Chat(sides, tokenizer, decoding, out, length)


def talk(chat: Chat, stream: TextIO) -> None:
    for line in turns(stream, chat.out):
        if not chat.handle(line):
            return
