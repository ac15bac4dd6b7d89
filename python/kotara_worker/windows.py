"""Tokens → fixed-length windows (SPEC §2).

The Hugging Face "perplexity of fixed-length models" loop, written as a plan:

    prev_end = 0
    for start in range(0, n, S):
        end = min(start + L, n)
        trg_len = end - prev_end          # targets no earlier window scored
        ...score the last trg_len tokens of input_ids[start:end]...
        prev_end = end
        if end == n: break

A causal LM predicts token j from tokens before it, so the token at window
position 0 has no context and is never scored — unless the caller puts a BOS
token in front of every window (`bos=True`), which gives it one.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    start: int          # first stream index fed to the model
    end: int            # one past the last stream index fed to the model
    first_scored: int   # targets first_scored .. end-1 are scored (each stream index once)

    @property
    def n_scored(self) -> int:
        return self.end - self.first_scored


def _check_lengths(max_length: int, stride: int, unit: str) -> None:
    if max_length <= 0:
        raise ValueError(f"max_length must be > 0, got {max_length}")
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    if stride > max_length:
        raise ValueError(f"stride ({stride}) must be <= max_length ({max_length}): "
                         f"a larger stride would skip {unit}")


def plan_windows(n_tokens: int, max_length: int, stride: int, bos: bool = False) -> list[Window]:
    """Windows over a stream of n_tokens tokens, in order.

    With stride < max_length every token after the first is scored exactly once
    (every token when bos=True); with stride == max_length each window's first
    token is unscored (scored when bos=True). A trailing window that would score
    nothing (one lone token, no BOS) is left out: it has no target.
    """
    _check_lengths(max_length, stride, "tokens")
    if n_tokens < 2:
        raise ValueError(f"the text has {n_tokens} token(s): at least 2 are needed to score anything")

    windows: list[Window] = []
    prev_end = 0
    for start in range(0, n_tokens, stride):
        end = min(start + max_length, n_tokens)
        trg_len = end - prev_end
        first_scored = end - trg_len
        if not bos:
            first_scored = max(first_scored, start + 1)  # position 0 has no context
        if first_scored < end:
            windows.append(Window(start, end, first_scored))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def _char_start(data: bytes, p: int) -> int:
    """The largest UTF-8 character boundary ≤ p (len(data) is one)."""
    while 0 < p < len(data) and data[p] & 0xC0 == 0x80:   # a continuation byte: inside a character
        p -= 1
    return p


def plan_byte_windows(data: bytes, max_length: int, stride: int) -> list[Window]:
    """Byte space (SPEC §7): windows over the text's bytes, max_length and stride counting
    bytes. The beams of every window start from the model's start token, which is the
    context of the window's first byte: every byte is scored, exactly once, as
    plan_windows(len(data), max_length, stride, bos=True) scores tokens.

    Every window starts and ends on a UTF-8 character boundary, so that its bytes are a
    text the model's tokenizer can tokenize on its own (a tokenizer reads characters, and
    its canonical tokenization of half a character is undefined). For a text of one-byte
    characters this is exactly the plan above; where a cut would fall inside a character
    it moves back to that character's first byte (at most 3 bytes): a window is then a
    little shorter than max_length, never longer, and the next one starts a little
    earlier. A character longer than max_length is refused."""
    n = len(data)
    _check_lengths(max_length, stride, "bytes")
    if n == 0:
        raise ValueError("the text is empty: nothing to score")
    windows: list[Window] = []
    start, prev_end = 0, 0
    while True:
        end = n if start + max_length >= n else _char_start(data, start + max_length)
        if end <= start:
            raise ValueError(f"max_length {max_length} (bytes) is shorter than the UTF-8 character at byte "
                             f"{start}: use a longer dataset.max_length")
        if end > prev_end:                     # (with a tiny stride, a cut can stay where it was)
            windows.append(Window(start, end, prev_end))
        prev_end = end
        if end == n:
            return windows
        nxt = _char_start(data, start + stride)
        if nxt <= start:                       # a stride shorter than the character here
            nxt = start + 1
            while data[nxt] & 0xC0 == 0x80:
                nxt += 1
        start = nxt


def window_bytes(windows: list[Window], text: str, token_ends) -> list[int]:
    """Token space: per window, the UTF-8 bytes of the text that its new stream positions
    spell, from where the previous window ended (the text's start, for the first window)
    to where it ends (the text's end, for the last). With stride < max_length those are
    its scored tokens (the first window also has the unscored token 0); with stride =
    max_length also the unscored first token of each window. So the counts partition the
    text: they add up to len(text.encode()), the bytes that bits per byte divides by.

    token_ends[j]: the character offset in `text` where token j's text ends (a fast
    tokenizer's offset mapping; a special token's is 0). A cut between two windows is the
    largest end among the tokens before it, so a special token (0, 0) moves nothing back,
    and whitespace an offset mapping leaves out (GPT-2 trims the space in front of a
    word) goes with the token after the cut, whose text it is."""
    import torch
    if not windows:
        return []
    ends = torch.as_tensor(token_ends, dtype=torch.long).reshape(-1)
    if ends.numel() < windows[-1].end:
        raise ValueError(f"token_ends has {ends.numel()} entries for a stream of at least {windows[-1].end} tokens")
    running = torch.cummax(ends, 0).values if ends.numel() else ends
    cuts = [0]
    for w in windows[:-1]:
        cuts.append(min(max(int(running[w.end - 1]), cuts[-1]), len(text)))
    cuts.append(len(text))
    return [len(text[a:b].encode("utf-8")) for a, b in zip(cuts, cuts[1:])]


def plan_document_windows(doc_lengths, max_length: int) -> tuple[list[Window], list[int]]:
    """Documents mode: lm-evaluation-harness's rolling windows (`loglikelihood_rolling`:
    utils.get_rolling_token_windows with context_len=1, then make_disjoint_window), for
    documents laid one after the other in one stream, each as [prefix] + its tokens.

    Per document of n tokens t (prefix at stream index o): the first window feeds the
    prefix and t[0 : min(L, n) - 1] and scores t[0 : min(L, n)]; each later window scores
    the next min(L, rest) tokens from L tokens of input that end just before its last
    target (so a full window carries one token of context, the last, shorter one up to
    L − wpl + 1). No window crosses a document. A window here includes its last target
    (Window.end = one past it); the pass feeds start .. end − 1 (evaluate's
    feed_last=False), so at most L tokens enter the model, as lm-eval feeds them.

    Returns the windows and each document's prefix index (−1 for a document of no token,
    which has no prefix and no window)."""
    if max_length <= 0:
        raise ValueError(f"max_length must be > 0, got {max_length}")
    windows: list[Window] = []
    prefixes: list[int] = []
    o = 0
    for n in doc_lengths:
        if n == 0:
            prefixes.append(-1)
            continue
        prefixes.append(o)
        first = min(max_length, n)
        windows.append(Window(o, o + 1 + first, o + 1))
        predicted = first
        while predicted < n:
            wpl = min(n - predicted, max_length)
            end = predicted + wpl                          # in the document's tokens
            windows.append(Window(o + end - max_length, o + 1 + end, o + 1 + end - wpl))
            predicted = end
        o += 1 + n
    return windows, prefixes
