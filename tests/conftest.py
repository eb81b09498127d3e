"""Shared fixtures: the real ChatGLM3 files from ../shared (skipped when absent) and the tiny model."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHATGLM3 = SHARED / "chatglm3"
REALDATA = SHARED / "realdata"


@pytest.fixture(scope="session")
def real_tokenizer_dir() -> Path:
    if not (CHATGLM3 / "tokenizer.model").is_file():
        pytest.skip("../shared/chatglm3/tokenizer.model is absent")
    return CHATGLM3


@pytest.fixture(scope="session")
def realdata_dir() -> Path:
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is absent")
    return REALDATA


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    from glmtune.tiny import ensure_tiny

    return ensure_tiny()
