"""Fused generation in token space: every model keeps its own KV cache, one step runs
each model once on the last token, fuses with the same strategy code as evaluation
(fusion.fused_log_probs: SPEC §3), picks the next token, and feeds it to every model.

Prompts of one request decode together: left-padded to the longest, an attention
mask hiding the padding, each row's positions counted from its own first token, so a
row's numbers are those of the same prompt decoded alone (up to the float rounding of
another batch shape; the tests check it). Every row starts from the start token (BOS;
EOS where there is none), as evaluation does with bos_per_window, so that what
generation reports for its own output is what evaluation says of that text.

What a step reports per row: the chosen token, its log-probability under the FUSED
distribution (not the sampling distribution: sampling temperature, top-k and top-p
only choose), and the per-model weights α of that step.
"""
from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .fusion import FusionConfig, Setting, check_settings, fused_log_probs
from .protocol import RequestError


@dataclass(frozen=True)
class Sampling:
    greedy: bool = True
    temperature: float = 1.0     # sampling temperature on the fused distribution (not the models')
    top_k: int = 0               # 0: no cut
    top_p: float = 1.0           # 1: no cut
    seed: int = 0

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Sampling":
        s = Sampling(bool(d["greedy"]), float(d["temperature"]), int(d["top_k"]), float(d["top_p"]), int(d["seed"]))
        if not s.temperature > 0 or s.top_k < 0 or not 0 < s.top_p <= 1:
            raise ValueError(f"sampling needs temperature > 0, top_k >= 0 and 0 < top_p <= 1, got {d}")
        return s


def choose(logp: torch.Tensor, s: Sampling, generator: torch.Generator) -> torch.Tensor:
    """The next token of each row of logp [B, V] (float32): argmax, or a sample of
    softmax(logp / temperature) cut to the top_k tokens and to the smallest set whose
    probability reaches top_p. Returns [B] long on the CPU (greedy takes the argmax where
    logp is and moves only the [B] ids; sampling moves logp to the CPU generator)."""
    if s.greedy:
        return logp.argmax(-1).cpu()                                        # [B]: on the logits' device, [B] back
    logp = logp.float().cpu()
    x = logp / s.temperature                                                # [B, V]
    if s.top_k and s.top_k < x.shape[-1]:
        kth = torch.topk(x, s.top_k, dim=-1).values[:, -1:]                 # [B, 1]
        x = x.masked_fill(x < kth, float("-inf"))
    if s.top_p < 1.0:
        order = torch.argsort(x, dim=-1, descending=True)                   # [B, V]
        p = torch.softmax(x.gather(-1, order), -1)
        before = torch.cumsum(p, -1) - p                                    # mass of the tokens ahead of each
        drop = before >= s.top_p                                            # the first token is always kept
        x = x.scatter(-1, order, x.gather(-1, order).masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(x, -1), 1, generator=generator).view(-1)   # [B]


def _cache_kw(model: Any) -> str:
    # transformers ≥ 5.2x names the forward's KV argument `cache` (past_key_values before)
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _keep_last_kw(model: Any) -> str | None:
    # transformers' causal LMs take logits_to_keep (num_logits_to_keep before 4.50): the head
    # then runs on the last position only, as model.generate does; a model without either
    # (remote code, say) computes every position's logits and the last is taken
    params = inspect.signature(model.forward).parameters
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)


class _Decoder:
    """One model's side of a batch: its KV cache, attention mask and next positions."""

    def __init__(self, model: Any, device: torch.device):
        self.model, self.device, self.kw = model, device, _cache_kw(model)
        self.keep_last = _keep_last_kw(model)
        self.cache: Any = None
        self.mask: torch.Tensor | None = None      # [B, L] long
        self.pos: torch.Tensor | None = None       # [B] long: the next token's position

    @torch.inference_mode()
    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] (left-padded): the logits after each row's last token [B, V]."""
        self.mask = mask.to(self.device)
        pos = (self.mask.cumsum(-1) - 1).clamp_min(0)                        # [B, L] each row from 0
        # the head on each row's last position only (left padding: every row's last is column -1)
        keep = {self.keep_last: 1} if self.keep_last else {}
        out = self.model(input_ids=ids.to(self.device), attention_mask=self.mask, position_ids=pos, use_cache=True,
                         **keep)
        self.cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        self.pos = pos[:, -1] + 1
        return out.logits[:, -1]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B]: the logits after it [B, V]."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)   # [B, L + 1]
        out = self.model(input_ids=tokens.view(-1, 1).to(self.device), attention_mask=self.mask,
                         position_ids=self.pos.view(-1, 1), use_cache=True, **{self.kw: self.cache})
        self.cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        self.pos = self.pos + 1
        return out.logits[:, -1]


@dataclass
class Row:
    """One prompt's generation."""
    index: int
    prompt_ids: list[int]
    truncated: int                       # prompt tokens cut from the left to fit the context
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)
    text: str = ""                       # the decoded output (cut at a stop string), set when it finishes
    stream: str = ""                     # the text decoded so far, piece by piece (_TextTail)
    sent: int = 0                        # characters of stream already streamed
    finish: str | None = None            # "length" | "stop" | "end"
    tail: "_TextTail | None" = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        n = max(1, len(self.weights))
        mean = [sum(w[m] for w in self.weights) / n for m in range(len(self.weights[0]))] if self.weights else []
        return {"prompt": self.index, "text": self.text, "tokens": self.tokens, "logprobs": self.logprobs,
                "weights_mean": mean, "finish": self.finish or "length", "prompt_tokens": len(self.prompt_ids),
                "truncated": self.truncated}


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters not to print yet: a partial UTF-8 character (the
    decoder writes U+FFFD for it) or the start of a stop string."""
    n = 0
    while n < len(text) and text[len(text) - 1 - n] == "\ufffd":
        n += 1
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n


class _TextTail:
    """A row's output text as it grows, decoding a few tokens per step instead of all of
    them (text-generation-inference's decode_token, the prefix and read offsets): each
    push decodes the tokens not printed yet together with the piece printed before them
    (its context: a space between two words, SentencePiece's leading space) and returns
    what they add to that piece. A window whose text ends in U+FFFD (a partial UTF-8
    character) waits for the next token; flush() gives it as it stands. Re-decoding
    every token at every step made a row's text cost O(n²) in its length."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0          # ids[prefix:read]: the piece printed last (the context)
        self.read = 0            # ids[read:]: not printed yet
        self.before = ""         # decode(ids[prefix:read])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False) if ids else ""

    def push(self, t: int) -> str:
        self.ids.append(t)
        return self._take(final=False)

    def flush(self) -> str:
        return self._take(final=True) if len(self.ids) > self.read else ""

    def _take(self, final: bool) -> str:
        text = self._decode(self.ids[self.prefix:])
        if not final and (len(text) <= len(self.before) or text.endswith("\ufffd")):
            return ""
        # text starts with before unless the decoder rewrites what came before the new
        # tokens (the Python-side clean_up_tokenization_spaces turns "a ." into "a."): what
        # was printed stays printed, as when every step decoded everything; the row's
        # final text is one decode of all its tokens in any case (_advance)
        new = text[len(self.before):]
        self.prefix, self.read = self.read, len(self.ids)
        self.before = self._decode(self.ids[self.prefix:self.read])
        return new


@dataclass
class Request:
    prompts: list[str]
    setting: Setting
    max_new: int
    sampling: Sampling
    stop: list[str]
    truncate: bool


def _prompt_rows(tokenizer: Any, r: Request, context: int | None, start_id: int,
                 warn: Callable[[str], None]) -> list[Row]:
    rows = []
    for i, prompt in enumerate(r.prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        room = None if context is None else context - 1 - r.max_new         # the start token, the new tokens
        if room is not None and room < 0:
            raise RequestError("context", f"max_new_tokens {r.max_new} does not fit the models' context of {context} "
                                          "positions with the start token")
        cut = 0 if room is None else max(0, len(ids) - room)
        if cut and not r.truncate:
            raise RequestError("context", f"prompt {i} is {len(ids)} tokens; with the start token and {r.max_new} new "
                                          f"tokens it needs {len(ids) + 1 + r.max_new} positions, over the models' "
                                          f"context of {context} (no truncation asked)")
        if cut:
            warn(f"prompt {i}: {len(ids)} tokens, truncated from the left to the last {room} to fit the context "
                 f"of {context} positions with {r.max_new} new tokens")
        rows.append(Row(i, [start_id, *ids[cut:]], cut, tail=_TextTail(tokenizer)))
    return rows


def _left_pad(rows: Sequence[Row], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(r.prompt_ids) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)             # [B, L]
    mask = torch.zeros(len(rows), L, dtype=torch.long)                     # [B, L]
    for b, r in enumerate(rows):
        ids[b, L - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
        mask[b, L - len(r.prompt_ids):] = 1
    return ids, mask


def generate(models: Sequence[Any], tokenizer: Any, vocab: int, r: Request, start_id: int,
             on_step: Callable[[int, list[dict[str, Any]]], None], should_stop: Callable[[], bool],
             warn: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Decode every prompt of r with the fused model. models: LoadedModel-likes (.model,
    .device, .max_positions). on_step(step, chunks) after each step with one chunk per
    row that produced a token ({prompt, token, text (newly printable), logprob, weights, done}).
    Returns {outputs: [Row.summary()], steps, seconds, first_token_seconds}. Raises
    Interrupted when should_stop() says so between steps."""
    check_settings([r.setting], len(models))
    contexts = [m.max_positions for m in models if m.max_positions]
    context = min(contexts) if contexts else None
    rows = _prompt_rows(tokenizer, r, context, start_id, warn)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start_id
    ids, mask = _left_pad(rows, pad)
    decoders = [_Decoder(m.model, m.device) for m in models]
    cfg = FusionConfig.for_device(models[0].device)
    generator = torch.Generator().manual_seed(r.sampling.seed)
    started = time.perf_counter()
    first_token = None
    logits = [d.prefill(ids, mask) for d in decoders]                       # [B, V_m] each
    for step in range(r.max_new):
        logp, alpha = fused_log_probs([z.to(logits[0].device) for z in logits], vocab, r.setting, cfg)   # [B, V], [B, N]
        chosen = choose(logp, r.sampling, generator)                       # [B] CPU
        # every row's values in one gather and one transfer each (not B small reads)
        picked = logp.gather(1, chosen.to(logp.device).view(-1, 1)).view(-1).tolist()
        tokens, weights = chosen.tolist(), alpha.tolist()
        chunks = []
        for b, row in enumerate(rows):
            if row.finish is not None:
                continue
            chunks.append(_advance(row, tokens[b], picked[b], weights[b], tokenizer, eos, r))
        if first_token is None:
            first_token = time.perf_counter() - started
        on_step(step, chunks)
        if all(row.finish is not None for row in rows) or step == r.max_new - 1:
            break
        if should_stop():
            raise Interrupted(f"stopped after {step + 1} steps")
        feed = torch.tensor([row.tokens[-1] if row.tokens else pad for row in rows], dtype=torch.long)
        logits = [d.step(feed) for d in decoders]
    for row in rows:
        if row.finish is None:                      # (every row finishes in _advance by max_new)
            row.finish = "length"
            row.text = tokenizer.decode(row.tokens, skip_special_tokens=False) if row.tokens else ""
    return {"outputs": [row.summary() for row in rows], "steps": max(len(row.tokens) for row in rows),
            "seconds": time.perf_counter() - started, "first_token_seconds": first_token or 0.0}


class Interrupted(Exception):
    """should_stop() said so, between two steps."""


def _advance(row: Row, t: int, logprob: float, weights: list[float], tokenizer: Any, eos: int | None,
             r: Request) -> dict[str, Any]:
    """Record token t for row; decide whether the row is finished; the newly printable text.
    The text grows by the pieces of row.tail (a few tokens decoded per step); when the row
    finishes, its text is one decode of all its tokens (without the end token), cut before
    the first stop string, and the last chunk carries what of it was not printed yet."""
    if not math.isfinite(logprob):
        raise RequestError("numerical", f"prompt {row.index}: the fused distribution gave its chosen token "
                                        f"{t} log-probability {logprob}")
    row.tokens.append(t)
    row.logprobs.append(logprob)
    row.weights.append(weights)
    if row.tail is None:
        row.tail = _TextTail(tokenizer)
    end = eos is not None and t == eos
    last = end or len(row.tokens) >= r.max_new
    piece = row.tail.push(t) if not end else ""
    if last:
        piece += row.tail.flush()
    before = len(row.stream)
    row.stream += piece
    if piece and any(s and row.stream.find(s, max(0, before - len(s) + 1)) >= 0 for s in r.stop):
        row.finish = "stop"          # a stop string ends in the new piece (none was in the text before it)
    elif end:
        row.finish = "end"
    elif last:
        row.finish = "length"
    if row.finish is None:
        printable = len(row.stream) - _held_back(row.stream, r.stop)
        new = row.stream[row.sent:printable] if printable > row.sent else ""
        row.sent = max(row.sent, printable)
    else:
        out_ids = row.tokens[:-1] if end else row.tokens
        text = tokenizer.decode(out_ids, skip_special_tokens=False) if out_ids else ""
        hits = [h for h in (text.find(s) for s in r.stop if s) if h >= 0]
        if hits:
            text, row.finish = text[:min(hits)], "stop"
        row.text = text
        new = text[row.sent:] if text.startswith(row.stream[:row.sent]) else ""
        row.sent = len(text)
    return {"prompt": row.index, "token": t, "text": new, "logprob": logprob, "weights": weights,
            "done": row.finish is not None}


# ----------------------------------------------------------------------------- byte space (SPEC §7)

@dataclass
class ByteRow:
    """One prompt's generation in byte space: the bytes written, and their text."""
    index: int
    streams: list[Any]                   # per model: its ByteLM stream (byte_lm._Window)
    truncated: int                       # prompt bytes cut from the left
    out: bytearray = field(default_factory=bytearray)
    tokens: list[int] = field(default_factory=list)       # byte values; 256 = "end"
    logprobs: list[float] = field(default_factory=list)
    weights: list[list[float]] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    finish: str | None = None

    def summary(self) -> dict[str, Any]:
        n = max(1, len(self.weights))
        mean = [sum(w[m] for w in self.weights) / n for m in range(len(self.weights[0]))] if self.weights else []
        return {"prompt": self.index, "text": self.text, "tokens": self.tokens, "logprobs": self.logprobs,
                "weights_mean": mean, "finish": self.finish or "length", "truncated": self.truncated}


def _byte_prompt(m: Any, prompt: str) -> tuple[bytes, list[int]]:
    """What model m writes before the first new byte, and its tokens: the prompt's bytes
    after the dummy prefix its tokenizer writes (b' ' for a text that does not start with
    a space: as byte_eval reads a text), so generation conditions as evaluation does."""
    from .token_bytes import canonical_ids
    reader = m.reader
    text = prompt if prompt or not reader.dummy_prefix else " "
    if not text:
        return b"", []
    ids, prefix = canonical_ids(reader.tokenizer, reader.table, text, dummy_prefix=reader.dummy_prefix)
    return prefix + text.encode("utf-8"), ids


def _fit_bytes(prompt: str, room: int) -> tuple[str, int]:
    """The prompt's last `room` bytes at most, cut on a character boundary: (text, bytes cut)."""
    b = prompt.encode("utf-8")
    if len(b) <= room:
        return prompt, 0
    cut = len(b) - room
    while cut < len(b) and (b[cut] & 0xC0) == 0x80:                      # not inside a character
        cut += 1
    return b[cut:].decode("utf-8"), cut


def generate_bytes(models: Sequence[Any], r: Request, on_step: Callable[[int, list[dict[str, Any]]], None],
                   should_stop: Callable[[], bool], warn: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Decode every prompt of r byte by byte with the fused 257-way distribution (SPEC §7):
    each model's byte LM (byte_eval.ByteModel: .lm, .reader, .max_positions) gives its
    next-byte row, fusion.fused_log_probs fuses them (the rows floored as byte_eval does),
    a byte is chosen, and every model's beam advances on it; "end" (256) ends a prompt.
    Chunks carry the byte as `token` and only complete UTF-8 characters as `text`."""
    import codecs
    from .byte_eval import LOG_FLOOR, VOCAB
    check_settings([r.setting], len(models))
    # worst case one token per byte: a prompt's tokens, the start token and the new bytes fit the context
    contexts = [m.max_positions for m in models if m.max_positions]
    room = None if not contexts else min(contexts) - 1 - r.max_new - 1      # (- 1: a dummy prefix)
    if room is not None and room < 0:
        raise RequestError("context", f"max_new_bytes {r.max_new} does not fit the models' context of "
                                      f"{min(contexts)} positions (one token a byte, at worst)")
    rows: list[ByteRow] = []
    for i, prompt in enumerate(r.prompts):
        text, cut = (prompt, 0) if room is None else _fit_bytes(prompt, room)
        if cut and not r.truncate:
            raise RequestError("context", f"prompt {i} is {len(prompt.encode())} bytes; with {r.max_new} new bytes it "
                                          f"may need more than the models' context of {min(contexts)} positions "
                                          "(no truncation asked)")
        if cut:
            warn(f"prompt {i}: truncated from the left by {cut} bytes to fit the context with {r.max_new} new bytes")
        streams = [m.lm.open_stream(*_byte_prompt(m, text)) for m in models]
        rows.append(ByteRow(i, streams, cut))
    decoders = [codecs.getincrementaldecoder("utf-8")(errors="replace") for _ in rows]
    cfg = FusionConfig.for_device("cpu")
    generator = torch.Generator().manual_seed(r.sampling.seed)
    started, first_token = time.perf_counter(), None
    for step in range(r.max_new):
        live = [row for row in rows if row.finish is None]
        per_model = [m.lm.next_rows([row.streams[k] for row in live]) for k, m in enumerate(models)]
        ls = [torch.stack(rs).clamp(min=LOG_FLOOR) for rs in per_model]     # [B, 257] per model
        logp, alpha = fused_log_probs(ls, VOCAB, r.setting, cfg)            # [B, 257], [B, N]
        chosen = choose(logp, r.sampling, generator)
        chunks = []
        for b, row in enumerate(live):
            c = int(chosen[b])
            chunks.append(_advance_bytes(row, c, float(logp[b, c]), alpha[b].tolist(), decoders[row.index], r))
            if c != VOCAB - 1:
                for k, m in enumerate(models):
                    m.lm.advance(row.streams[k], c)
        if first_token is None:
            first_token = time.perf_counter() - started
        on_step(step, chunks)
        if all(row.finish is not None for row in rows):
            break
        if should_stop():
            raise Interrupted(f"stopped after {step + 1} steps")
    for row in rows:
        row.finish = row.finish or "length"
    return {"outputs": [row.summary() | {"prompt_tokens": len(r.prompts[row.index].encode()) - row.truncated}
                        for row in rows],
            "steps": max(len(row.tokens) for row in rows),
            "seconds": time.perf_counter() - started, "first_token_seconds": first_token or 0.0}


def _advance_bytes(row: ByteRow, c: int, logprob: float, weights: list[float], decoder: Any,
                   r: Request) -> dict[str, Any]:
    if not math.isfinite(logprob) or logprob < -1e29:
        raise RequestError("numerical", f"prompt {row.index}: the fused distribution gave its chosen byte {c} "
                                        f"log-probability {logprob}")
    row.tokens.append(c)
    row.logprobs.append(logprob)
    row.weights.append(weights)
    if c == 256:
        row.finish = "end"
        new = decoder.decode(b"", final=True)
    else:
        row.out.append(c)
        new = decoder.decode(bytes([c]))
    row.text += new
    hits = [row.text.find(s) for s in r.stop if row.text.find(s) >= 0]
    if hits:
        row.text, row.finish = row.text[:min(hits)], "stop"
    elif len(row.tokens) >= r.max_new and row.finish is None:
        row.finish = "length"
        row.text += decoder.decode(b"", final=True)
    printable = len(row.text) if row.finish is not None else len(row.text) - _held_back(row.text, r.stop)
    text = row.text[row.sent:printable] if printable > row.sent else ""
    row.sent = max(row.sent, printable)
    return {"prompt": row.index, "token": c, "text": text, "logprob": logprob, "weights": weights,
            "done": row.finish is not None}
