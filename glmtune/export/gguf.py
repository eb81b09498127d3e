"""The merged model as one GGUF file for llama.cpp and Ollama (`glmtune export --format gguf`).

ChatGLM3 has no official path to GGUF: llama.cpp's converter reads ChatGLM3's vocabulary only through
THUDM's remote tokenizer code, from a folder named like `THUDM/chatglm3-6b`, and writes no chat
template or turn stops, so its files answer in the wrong layout or never stop. This module writes
the file itself with the `gguf` package (the writer llama.cpp maintains), in llama.cpp's `chatglm`
architecture as its converter lays it out (conversion/chatglm.py; src/models/chatglm.cpp reads it):

- tensors: q/k/v fused into `attn_qkv` (with its bias) and the MLP's gate and up halves in one
  `ffn_up`, i.e. ChatGLM3's original layout (`job.chatglm_tensors`), under gguf's names for it;
  no rope table (llama.cpp computes it from `rope.freq_base`). Norms and biases are F32, as llama.cpp
  wants them; 2-D weights bf16, or quantized here by gguf's own numpy quantizers, so no llama-quantize
  pass is needed. q4_0 keeps the output layer in q8_0: llama-quantize gives it more bits too (q6_k,
  which gguf's numpy code cannot write; q8_0 is its own choice where q6_k does not fit).
- vocabulary: the base's SentencePiece pieces, scores and types, then ChatGLM3's nine control tokens
  at their ids ([MASK] ... <|observation|>), then the embedding's padding rows as unused `[PADn]`.
  llama.cpp's SentencePiece tokenizer with a dummy prefix after every control token gives exactly
  `glmtune.chat_ids` for a rendered prompt; no BOS is added (the template writes `[gMASK]sop`).
- stops: eos, plus <|user|> as end-of-turn and <|observation|> as end-of-message, which llama.cpp
  makes end-of-generation tokens: a reply ends where ChatGLM3's own generation ends it.
- the chat template: the export's own (job.chat_template), which llama.cpp's Jinja engine runs and
  whose `[gMASK]sop` its built-in detection recognises as ChatGLM3's; ChatGLM3's sampling defaults
  (temperature and top-p 0.8) as the file's `general.sampling` defaults.

One trade-off llama.cpp imposes: control tokens are matched anywhere in a rendered prompt, so text
holding "sop" or "eop" inside a word ("esophagus", "people") gets a control token there, where the
native export (whole words only) and glmtune.chat_ids (none) keep it text. Plain tokenization (no
special tokens parsed) is exact.

Ollama imports the file with the Modelfile written beside it: its Go template builds the same layout
(tool messages as ChatGLM3's observation turns), and it stops on the same tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ModelLoadError
from ..model.tokenizer import EOS_ID, PAD_ID, SPECIAL_TOKENS

# SentencePiece's token types as llama.cpp numbers them (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# ChatGLM3's generation_config.json: sampled at these settings, no repetition penalty
TEMPERATURE = TOP_P = 0.8
METADATA_BYTES = 16 * 2**20  # the vocabulary (65,024 pieces: about 2 MiB), template and settings, with room


@dataclass(frozen=True)
class Vocabulary:
    """What llama.cpp needs of ChatGLM3's tokenizer, one entry per row of the embedding."""

    tokens: list[str]
    scores: list[float]
    types: list[int]
    pieces: int  # SentencePiece's own, before the control tokens

    def id(self, token: str) -> int:
        return self.pieces + SPECIAL_TOKENS.index(token)


def read_vocabulary(base_dir: Path, rows: int) -> Vocabulary:
    """The base's tokenizer.model as GGUF's vocabulary for an embedding of `rows` rows; ModelLoadError
    when the base has no SentencePiece tokenizer.model, as ChatGLM3 has (GLM-4's is tiktoken's)."""
    import sentencepiece as spm

    model_file = base_dir / "tokenizer.model"
    if not model_file.is_file():
        raise ModelLoadError(f"{base_dir}: no tokenizer.model, ChatGLM3's SentencePiece file, which the GGUF's "
                             "vocabulary is written from; pass the official checkpoint (or a copy holding its "
                             "tokenizer.model) as --base-model")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as err:
        raise ModelLoadError(f"{model_file} is not a SentencePiece model ({str(err).splitlines()[0]}); --format gguf "
                             "exports ChatGLM3, whose tokenizer.model is one (GLM-4's is not)") from None
    pieces = sp.vocab_size()
    if pieces + len(SPECIAL_TOKENS) > rows:
        raise ModelLoadError(f"{model_file}: {pieces} pieces and ChatGLM3's {len(SPECIAL_TOKENS)} control tokens do "
                             f"not fit the model's {rows} embedding rows; is this the base's own tokenizer.model?")
    tokens, scores, types = [], [], []
    for i in range(pieces):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
                     else BYTE if sp.is_byte(i) else NORMAL)
    tokens += SPECIAL_TOKENS
    scores += [0.0] * len(SPECIAL_TOKENS)
    types += [CONTROL] * len(SPECIAL_TOKENS)
    padding = range(len(tokens), rows)
    return Vocabulary(tokens + [f"[PAD{i}]" for i in padding], scores + [0.0] * len(padding),
                      types + [UNUSED] * len(padding), pieces)


def tensor_type(name: str, shape: tuple[int, ...], gguf_type: str):
    """The GGML type a tensor is written in (see the module's notes)."""
    import gguf

    q = gguf.GGMLQuantizationType
    if len(shape) == 1:
        return q.F32
    wanted = {"bf16": q.BF16, "q8_0": q.Q8_0, "q4_0": q.Q8_0 if name == "output.weight" else q.Q4_0}[gguf_type]
    block, _ = gguf.GGML_QUANT_SIZES[wanted]
    return wanted if shape[-1] % block == 0 else q.BF16  # rows that do not split into blocks stay unquantized


def gguf_tensors(model) -> list[tuple[str, list, tuple[int, ...]]]:
    """(GGUF name, the model's tensors it is made of, its torch shape) for every tensor llama.cpp reads."""
    import gguf

    from .job import chatglm_tensors

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.CHATGLM, model.config.num_hidden_layers)
    found = []
    for original, parts in chatglm_tensors(model):
        if original.endswith("rotary_pos_emb.inv_freq"):
            continue
        name = names.get_name(original.removeprefix("transformer."), try_suffixes=(".weight", ".bias"))
        found.append((name, parts, (sum(p.shape[0] for p in parts), *parts[0].shape[1:])))
    return found


def tensor_bytes(shape: tuple[int, ...], qtype) -> int:
    import gguf

    return math.prod(gguf.quant_shape_to_byte_shape(shape, qtype))


def gguf_size(model, gguf_type: str) -> int:
    """The file's size for `model` (a meta-device skeleton will do), its metadata included."""
    return METADATA_BYTES + sum(tensor_bytes(shape, tensor_type(name, shape, gguf_type))
                                for name, _, shape in gguf_tensors(model))


def file_type(gguf_type: str):
    import gguf

    return {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type]


def write_gguf(model, vocabulary: Vocabulary, template: str, path: Path, gguf_type: str, name: str) -> None:
    """`model` (the merged GlmForCausalLM) as one GGUF file at `path`. Tensors are converted one at a
    time while the file is written, so the export needs no second copy of the model in memory."""
    import gguf
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    config = model.config
    rope = config.rope_parameters
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.CHATGLM])
    writer.add_name(name)
    writer.add_file_type(file_type(gguf_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    # ChatGLM3 rotates the first half of each head in adjacent pairs (llama.cpp's "norm" rope for
    # this architecture); the 32k variant's rope_ratio is already in rope_theta (model/loading.py).
    writer.add_rope_dimension_count(int(config.head_dim * rope.get("partial_rotary_factor", 0.5)))
    writer.add_rope_freq_base(rope["rope_theta"])

    writer.add_tokenizer_model("llama")  # llama.cpp's SentencePiece tokenizer
    writer.add_tokenizer_pre("chatglm-spm")
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_scores(vocabulary.scores)
    writer.add_token_types(vocabulary.types)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(True)
    writer.add_unk_token_id(PAD_ID)
    writer.add_pad_token_id(PAD_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_eot_token_id(vocabulary.id("<|user|>"))
    writer.add_eom_token_id(vocabulary.id("<|observation|>"))
    writer.add_chat_template(template)
    writer.add_sampling_temp(TEMPERATURE)
    writer.add_sampling_top_p(TOP_P)

    tensors = [(n, parts, shape, tensor_type(n, shape, gguf_type)) for n, parts, shape in gguf_tensors(model)]
    for n, _, shape, qtype in tensors:  # the shape is the logical one (numpy's dtype says so: not raw uint8 bytes)
        writer.add_tensor_info(n, shape, np.dtype(np.float32), tensor_bytes(shape, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        with tqdm(total=sum(tensor_bytes(s, q) for _, _, s, q in tensors), unit="B", unit_scale=True,
                  desc=f"Writing {path.name}") as bar:
            for _, parts, shape, qtype in tensors:
                with torch.no_grad():
                    data = encode(torch.cat(parts) if len(parts) > 1 else parts[0], qtype)
                writer.write_tensor_data(data)
                bar.update(data.nbytes)
    finally:
        writer.close()


def encode(tensor, qtype) -> Any:
    """One tensor's bytes as GGUF stores them, in `qtype`."""
    import gguf
    import torch

    q = gguf.GGMLQuantizationType
    if qtype == q.F32:
        return tensor.detach().float().cpu().numpy()
    if qtype == q.BF16:  # torch rounds to bf16 as ggml does (to nearest even); a bf16 merge is copied as it is
        return tensor.detach().to(torch.bfloat16).cpu().view(torch.uint8).numpy()
    return gguf.quants.quantize(tensor.detach().float().cpu().numpy(), qtype)


def modelfile(gguf_name: str, layout: str, context: int) -> str:
    """Ollama's Modelfile for the GGUF beside it: ChatGLM3's layout (`layout` "chat") or the glm3
    layout a run was trained on, reproducing the GGUF's chat template, and ChatGLM3's stops and
    sampling settings."""
    if layout == "chat":
        # As job.CHAT_TEMPLATE: a space before non-empty content (SentencePiece's dummy prefix), none
        # for an empty one; Ollama's tool messages are ChatGLM3's observations.
        template = ('[gMASK]sop{{ range .Messages }}<|{{ if eq .Role "tool" }}observation{{ else }}{{ .Role }}{{ end }}'
                    '|>\n{{ if .Content }} {{ .Content }}{{ end }}{{ end }}<|assistant|>')
    else:
        # The glm3 layout holds one question: the last user message.
        from ..model.prompts import GLM3_TEMPLATE

        template = ('{{ $question := "" }}{{ range .Messages }}{{ if eq .Role "user" }}{{ $question = .Content }}'
                    '{{ end }}{{ end }}[gMASK]sop' + GLM3_TEMPLATE.replace("{question}", "{{ $question }}"))
    return "\n".join([
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        'PARAMETER stop "<|user|>"',
        'PARAMETER stop "<|observation|>"',
        f"PARAMETER temperature {TEMPERATURE}",
        f"PARAMETER top_p {TOP_P}",
        "PARAMETER repeat_penalty 1.0",
        f"PARAMETER num_ctx {context}",
        "",
    ])
