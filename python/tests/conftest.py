"""Shared test set-up: python/ on sys.path (so `import kotara_worker` works from the
repository root), and the tiny models, built once per session in a temporary dir."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PYTHON = TESTS.parent
for _p in (PYTHON, TESTS):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def spec(ref: str | Path, **kw) -> dict:
    """A protocol ModelSpec for a local directory, CPU by default."""
    return {"ref": str(ref), "revision": None, "trust_remote_code": False, "dtype": "auto", "device": "cpu", **kw}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """{name: path} of every model tiny_models.build_all makes, plus "text"."""
    import tiny_models
    from transformers.utils import logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    return {k: Path(v) for k, v in tiny_models.build_all(tmp_path_factory.mktemp("tiny")).items()}


@pytest.fixture(scope="session")
def tiny_tokens(tiny):
    """The tiny tokenizer and text.txt as one token stream (LongTensor [n])."""
    import torch
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny["gpt2-a"])
    ids = torch.tensor(tok(tiny["text"].read_text(encoding="utf-8"))["input_ids"], dtype=torch.long)
    return tok, ids


@pytest.fixture
def one_thread():
    """Tiny models on 2 shared cores: intra-op threads only add sync cost (and under
    load, a lot of it). Restored after the test."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
