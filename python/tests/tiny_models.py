"""Tiny Hugging Face models, built offline in seconds, for the tests (Python and
TypeScript end-to-end), plus FakeModel: a deterministic stand-in for LoadedModel.

    .venv/bin/python python/tests/tiny_models.py OUTDIR

writes OUTDIR/{gpt2-a, gpt2-b, llama, gpt2-padded, gpt2-othertok, gemma2-softcap,
remote-code}/ (each with its tokenizer files) and OUTDIR/text.txt, and prints a JSON
summary. Everything is seeded: two builds give the same files.
"""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import torch

SEQ = 128   # n_positions of every tiny model
BOS = "<|endoftext|>"

# ----------------------------------------------------------------------------- text

_SUBJECTS = ["the cat", "a small dog", "my neighbour", "the old sailor", "a young student", "the river",
             "our teacher", "the green bird", "a tired farmer", "the city"]
_VERBS = ["sees", "follows", "paints", "remembers", "carries", "finds", "likes", "builds", "watches", "answers"]
_OBJECTS = ["a red boat", "the long road", "three apples", "the quiet house", "an open window",
            "the morning light", "a wooden chair", "the last train", "seven stones", "the warm bread"]
_TAILS = ["", " every day", " near the sea", " in the rain", " after dinner", " with great care",
          " before the winter", " without a word"]


def make_text(n_sentences: int, seed: int) -> str:
    """Seeded sentences from a small grammar: structured enough for a 2-layer model to learn."""
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(n_sentences):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."
        line.append(s[0].upper() + s[1:])
        if len(line) == rng.randint(3, 6):
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- tokenizers

def make_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE (any text encodes), saved-able as a PreTrainedTokenizerFast with BOS/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS)


# ----------------------------------------------------------------------------- models

def _train(model, ids: torch.Tensor, steps: int, seed: int) -> None:
    """A few AdamW steps so the models are better than uniform and differ from each other."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - 65, (8,), generator=g)
        batch = torch.stack([ids[s:s + 64] for s in starts.tolist()])          # [8, 64]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def gpt2(vocab_rows: int, bos_id: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_rows, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=bos_id, eos_token_id=bos_id)
    return GPT2LMHeadModel(cfg)


def llama(vocab_rows: int, bos_id: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                      bos_token_id=bos_id, eos_token_id=bos_id, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def gemma2_softcap(vocab_rows: int, bos_id: int, seed: int):
    """Gemma-2 squashes its logits after the head (final_logit_softcapping): head(hidden)
    is not the model's output, so Kotara must take the full-forward path for it."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    torch.manual_seed(seed)
    cfg = Gemma2Config(vocab_size=vocab_rows, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=SEQ,
                       final_logit_softcapping=0.5, bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=bos_id)
    return Gemma2ForCausalLM(cfg)


def remote_code_dir(out: Path) -> None:
    """A checkpoint whose architecture lives in the repository's own Python files."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({
        "model_type": "kotara-custom", "architectures": ["KotaraCustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_kotara.KotaraCustomConfig",
                     "AutoModelForCausalLM": "modeling_kotara.KotaraCustomForCausalLM"}}, indent=1))
    (out / "configuration_kotara.py").write_text(
        "from transformers import PretrainedConfig\n\n\n"
        "class KotaraCustomConfig(PretrainedConfig):\n    model_type = 'kotara-custom'\n")
    (out / "modeling_kotara.py").write_text("raise RuntimeError('remote code must not run in Kotara tests')\n")


def build_all(outdir: str | Path, steps: int = 25) -> dict[str, str]:
    """Every tiny model under outdir; returns {name: path}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny matmuls: threads only add sync cost (and the cores are shared)
    try:
        return _build_all(Path(outdir), steps)
    finally:
        torch.set_num_threads(threads)


def _build_all(out: Path, steps: int) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    corpus = make_text(600, seed=1)
    tok = make_tokenizer(corpus, 400)
    other = make_tokenizer(make_text(600, seed=2).upper(), 400)   # same size, other tokens
    bos = tok.bos_token_id
    ids = torch.tensor(tok(corpus)["input_ids"])
    paths: dict[str, str] = {}

    def save(name: str, model, tokenizer, train_seed: int | None) -> None:
        if train_seed is not None:
            _train(model, ids if tokenizer is tok else torch.tensor(tokenizer(corpus)["input_ids"]),
                   steps, train_seed)
        d = out / name
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        # transformers 5 writes tokenizer_class "TokenizersBackend", which 4.x cannot
        # load; the generic fast class loads in both (as scripts/train_demo.py does).
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        paths[name] = str(d)

    save("gpt2-a", gpt2(len(tok), bos, seed=10), tok, 11)
    save("gpt2-b", gpt2(len(tok), bos, seed=20), tok, 21)
    save("llama", llama(len(tok), bos, seed=30), tok, 31)
    save("gpt2-padded", gpt2(len(tok) + 13, bos, seed=40), tok, 41)
    save("gpt2-othertok", gpt2(len(other), other.bos_token_id, seed=50), other, None)
    save("gemma2-softcap", gemma2_softcap(len(tok), bos, seed=60), tok, None)
    remote_code_dir(out / "remote-code")
    paths["remote-code"] = str(out / "remote-code")
    (out / "text.txt").write_text(make_text(120, seed=3), encoding="utf-8")
    paths["text"] = str(out / "text.txt")
    return paths


# ----------------------------------------------------------------------------- a fake backend

class FakeModel:
    """A deterministic LoadedModel stand-in (the lm-evaluation-harness "dummy LM" idea):
    logits from seeded tables, depending on the current and the previous token.
    nan_token: hidden states (hence logits) are NaN wherever the input is that token."""

    def __init__(self, vocab_rows: int, seed: int = 0, ref: str = "fake", hidden_size: int = 16,
                 scale: float = 3.0, nan_token: int | None = None, head_path: str = "scored",
                 max_positions: int | None = None):
        g = torch.Generator().manual_seed(seed)
        self.ref, self.head_path, self.max_positions = ref, head_path, max_positions
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.vocab_size = vocab_rows
        self.parameters = 3 * vocab_rows * hidden_size
        self.emb = torch.randn(vocab_rows, hidden_size, generator=g)                 # [V, H]
        self.prev = 0.5 * torch.randn(vocab_rows, hidden_size, generator=g)          # [V, H]
        self.out = scale / math.sqrt(hidden_size) * torch.randn(hidden_size, vocab_rows, generator=g)  # [H, V]
        self.nan_token = nan_token
        self.forwards = 0   # calls of hidden() / full_logits(): one per batch

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        h = self.emb[input_ids].clone()                                              # [B, L, H]
        h[:, 1:] += self.prev[input_ids[:, :-1]]
        if self.nan_token is not None:
            h[input_ids == self.nan_token] = float("nan")
        return h

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.out                                                     # [P, V]

    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.hidden(input_ids)
        return h @ self.out                                                          # [B, L, V]

    def describe(self) -> dict:
        return {"ref": self.ref, "device": "cpu", "dtype": "float32", "parameters": self.parameters,
                "vocab_size": self.vocab_size, "max_positions": self.max_positions, "head_path": self.head_path,
                "tokenizer": self.ref}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: tiny_models.py OUTDIR")
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    print(json.dumps(build_all(sys.argv[1]), indent=1))
