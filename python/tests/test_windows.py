"""windows.plan_windows against the Hugging Face fixed-length loop, transcribed here."""
from __future__ import annotations

from collections import Counter

import pytest

from kotara_worker.windows import Window, plan_windows

CASES = [(n, L, S) for n in (2, 3, 7, 10, 11, 64, 65, 100) for L in (1, 2, 4, 10, 16) for S in (1, 3, 4, 10, 16)
         if S <= L]


def hf_loop(n: int, L: int, S: int, bos: bool) -> list[tuple[int, int, set[int]]]:
    """(begin, end, scored stream indices) per window, as the HF docs loop does it:
    labels = input_ids with [:-trg_len] set to -100, then the model shifts labels by
    one, so label 0 of the window is never a loss target (unless a BOS precedes it)."""
    out, prev_end = [], 0
    for begin in range(0, n, S):
        end = min(begin + L, n)
        trg_len = end - prev_end
        labels = list(range(begin, end))
        labels = [-100] * (len(labels) - trg_len) + labels[len(labels) - trg_len:]
        if bos:
            labels = [-100] + labels          # the BOS position has no label
        scored = {t for t in labels[1:] if t != -100}
        out.append((begin, end, scored))
        prev_end = end
        if end == n:
            break
    return out


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("n,L,S", CASES)
def test_windows_are_the_hf_loop(n, L, S, bos):
    expected = [w for w in hf_loop(n, L, S, bos) if w[2]]        # a window with no target is left out
    got = plan_windows(n, L, S, bos=bos)
    assert [(w.start, w.end, set(range(w.first_scored, w.end))) for w in got] == expected


@pytest.mark.parametrize("n,L,S", CASES)
def test_every_token_scored_at_most_once_and_the_right_ones(n, L, S):
    for bos in (False, True):
        counts = Counter(j for w in plan_windows(n, L, S, bos=bos) for j in range(w.first_scored, w.end))
        assert set(counts.values()) <= {1}
        if bos:
            assert set(counts) == set(range(n))                       # every token, given BOS
        elif S < L:
            assert set(counts) == set(range(1, n))                    # every token after the first
        else:
            starts = set(range(0, n, S))
            assert set(counts) == set(range(n)) - starts              # each window's first token unscored


def test_counts_and_context():
    ws = plan_windows(1000, 128, 64)
    assert len(ws) == len(range(0, 1000 - 128 + 64, 64))              # the last window reaches n
    assert ws[-1].end == 1000 and ws[-2].end < 1000 and ws[-1].start == 64 * (len(ws) - 1)
    assert all(w.end - w.start == 128 for w in ws[:-1])               # only the last may be shorter
    assert sum(w.n_scored for w in ws) == 999
    # with S < L every target after the first window has at least L - S tokens of context
    assert all(w.first_scored - w.start >= 64 for w in ws[1:])
    assert sum(w.n_scored for w in plan_windows(1000, 128, 128)) == 1000 - len(range(0, 1000, 128))
    assert sum(w.n_scored for w in plan_windows(1000, 128, 128, bos=True)) == 1000
    assert plan_windows(5, 10, 10) == [Window(0, 5, 1)]


@pytest.mark.parametrize("args,needle", [
    ((100, 10, 11), "stride (11) must be <= max_length (10)"),
    ((100, 0, 0), "max_length must be > 0"),
    ((100, 10, 0), "stride must be > 0"),
    ((100, 10, -1), "stride must be > 0"),
    ((1, 10, 5), "at least 2"),
    ((0, 10, 5), "at least 2"),
])
def test_bad_arguments(args, needle):
    with pytest.raises(ValueError) as e:
        plan_windows(*args)
    assert needle in str(e.value)


# ----------------------------------------------------------------------------- byte space

from kotara_worker.windows import plan_byte_windows  # noqa: E402


@pytest.mark.parametrize("n,L,S", [c for c in CASES if c[0] >= 2])
def test_byte_windows_of_one_byte_characters_are_the_bos_plan(n, L, S):
    assert plan_byte_windows(b"a" * n, L, S) == plan_windows(n, L, S, bos=True)


def test_byte_windows_cut_on_character_boundaries_and_score_every_byte_once():
    import random
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice("ab é€🙂\n") for _ in range(rng.randint(1, 40)))
        data = text.encode()
        L = rng.randint(4, 20)
        S = rng.randint(1, L)
        scored = []
        for w in plan_byte_windows(data, L, S):
            assert w.end - w.start <= L and w.start <= w.first_scored < w.end
            data[w.start:w.end].decode("utf-8")                     # whole characters only
            scored += range(w.first_scored, w.end)
        assert scored == list(range(len(data))), (text, L, S)


def test_byte_windows_refuse_what_they_cannot_cut():
    with pytest.raises(ValueError, match="shorter than the UTF-8 character at byte 1"):
        plan_byte_windows("a🙂".encode(), 3, 3)
    with pytest.raises(ValueError, match="empty"):
        plan_byte_windows(b"", 4, 4)
    with pytest.raises(ValueError, match="stride"):
        plan_byte_windows(b"abc", 2, 3)
    assert plan_byte_windows(b"a", 4, 4) == [Window(0, 1, 0)]       # one byte: the start token is its context


# ----------------------------------------------------------------------------- bytes per window (token space)

def test_window_bytes_partition_the_text_along_the_new_tokens_of_each_window():
    from kotara_worker.windows import window_bytes
    text = "hello wörld 🙂 and\nmore"
    # a tokenization with what offset mappings do: a special token (0, 0) in front, a space
    # trimmed off the front of the token that carries it (" wörld" as (6, 11)), a 4-byte
    # character split over two tokens with the same offsets, a special token at the end
    pieces = [(0, 0), (0, 5), (6, 11), (11, 12), (12, 13), (12, 13), (13, 17), (17, 18), (18, 22), (0, 0)]
    ends = [e for _, e in pieces]
    n = len(pieces)
    for L, S, bos in ((3, 3, False), (4, 2, False), (3, 3, True), (2, 1, False), (n, n, False)):
        windows = plan_windows(n, L, S, bos=bos)
        got = window_bytes(windows, text, ends)
        assert sum(got) == len(text.encode()) and all(b >= 0 for b in got)
        # the cut after window i: the largest token end before its last position (not moved back)
        cuts, hi = [0], 0
        for w in windows[:-1]:
            hi = max([hi] + ends[:w.end])
            cuts.append(hi)
        cuts.append(len(text))
        assert got == [len(text[a:b].encode()) for a, b in zip(cuts, cuts[1:])], (L, S, bos)
    # the trimmed space goes with the token after the cut, whose text it is
    w2 = plan_windows(n, 2, 2)
    assert w2[0].end == 2 and window_bytes(w2, text, ends)[:2] == [len(b"hello"), len(" wörld ".encode())]
    with pytest.raises(ValueError, match="token_ends"):
        window_bytes(plan_windows(n, 3, 3), text, ends[:4])
