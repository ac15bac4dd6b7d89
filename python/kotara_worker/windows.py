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


def plan_windows(n_tokens: int, max_length: int, stride: int, bos: bool = False) -> list[Window]:
    """Windows over a stream of n_tokens tokens, in order.

    With stride < max_length every token after the first is scored exactly once
    (every token when bos=True); with stride == max_length each window's first
    token is unscored (scored when bos=True). A trailing window that would score
    nothing (one lone token, no BOS) is left out: it has no target.
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be > 0, got {max_length}")
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    if stride > max_length:
        raise ValueError(f"stride ({stride}) must be <= max_length ({max_length}): "
                         "a larger stride would skip tokens")
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
