"""Where a model's files come from: 'tiny', a local folder, the ModelScope cache, or the HF hub.

Users in China download ChatGLM3 from ModelScope (`ZhipuAI/chatglm3-6b`) or through an HF mirror
(`HF_ENDPOINT`); a model id found in the local ModelScope cache is used from there, with no network.
Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.config import is_hub_id
from ..core.errors import ModelLoadError


def modelscope_cache() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE", Path.home() / ".cache" / "modelscope" / "hub")).expanduser()


def find_in_modelscope_cache(model_id: str) -> Path | None:
    """The folder of `model_id` in the ModelScope cache, in any of the layouts its versions wrote
    (`hub/models/ORG/NAME`, `hub/ORG/NAME`, dots in names stored as '___'), or None."""
    org, name = model_id.split("/")
    root = modelscope_cache()
    for candidate_name in dict.fromkeys((name, name.replace(".", "___"))):
        for folder in (root / "models" / org / candidate_name, root / org / candidate_name):
            if (folder / "config.json").is_file():
                return folder
    return None


def resolve_model_dir(name_or_path: str | Path, weights: bool = True) -> Path:
    """`tiny` -> the cached tiny checkpoint; an existing folder -> itself; an id found in the
    ModelScope cache -> that folder; else an HF hub id, downloaded (without the weight shards when
    `weights` is False: the tokenizer needs only the small files)."""
    if str(name_or_path) == "tiny":
        from .tiny import ensure_tiny

        return ensure_tiny()
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file; --model wants the checkpoint folder that holds config.json")
    if not is_hub_id(str(name_or_path)):
        raise ModelLoadError(f"{name_or_path}: no such folder. Give a ChatGLM3 folder, a hub id, or 'tiny'.")
    cached = find_in_modelscope_cache(str(name_or_path))
    if cached is not None:
        return cached
    return _download(str(name_or_path), weights)


def _download(repo_id: str, weights: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        if not weights:
            return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.model"]))
        # Safetensors when the repo has them; the official repo also has .bin shards, not needed twice.
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.model", "*.safetensors"]))
        if not list(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.model", "*.bin"]))
    except Exception as err:  # offline, gated, or mistyped: all need the same advice
        raise ModelLoadError(
            f"could not download {repo_id} from the Hugging Face hub ({type(err).__name__}: {str(err)[:200]}). "
            "Set HF_ENDPOINT to a mirror, download it from ModelScope (see the README), or pass a local "
            "folder; --model tiny runs the CPU demo."
        ) from err
    return folder


def needs_gpu(name_or_path: str | Path) -> bool:
    """True for anything but `tiny` or a local checkpoint under ~1B parameters (hub ids are 6B)."""
    if str(name_or_path) == "tiny":
        return False
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir() and is_hub_id(str(name_or_path)):
        folder = find_in_modelscope_cache(str(name_or_path)) or folder
    config = folder / "config.json"
    if not config.is_file():
        return True
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # read_config names the problem when the model loads
    hidden = raw.get("hidden_size", 0)
    layers = raw.get("num_layers", raw.get("num_hidden_layers", 0))
    return 12 * layers * hidden * hidden >= 1e9  # transformer blocks' parameters, roughly
