#!/usr/bin/env python3
"""The demo corpora, taken from the running Python interpreter itself.

Kotara's demo models (models/demo/, trained by scripts/train_demo.py) are trained
on text that ships with every Python interpreter, so a fresh clone can rebuild the
held-out text offline on any machine and no text from elsewhere is ever committed.

Two domains:

  docs  the interactive-help topics of the language reference
        (``pydoc_data.topics.topics``: one entry per topic key).
  code  the standard library's own ``.py`` source files (``sysconfig``'s
        ``stdlib`` path; tests, ``site-packages``, codec tables and
        ``pydoc_data`` itself are left out).

Each domain is split deterministically into a training part and a held-out part:
the items (topics, files) are ordered by a stable hash of their key (SHA-256 of
the topic key or of the file's path relative to the stdlib) and taken into the
held-out part in that order until it reaches its target size (items too big for
the remaining room are passed over). Held-out items are never trained on; the
docs topics also overlap one another (``compound`` contains ``if``, ``while``…),
so every training paragraph that also occurs in a held-out topic is removed from
the training part ("decontamination").

The split depends only on the keys and the texts, so it is the same on every run
and every machine with the same Python version; another Python version ships
slightly different text, hence slightly different (but equally held-out) data.

CLI:  python scripts/demo_text.py [--out data/demo]
      writes OUT/docs-heldout.txt and OUT/code-heldout.txt (and prints sizes),
      and OUT/docs-heldout-2k.txt: the held-out docs' first whole lines, at most
      DOCS_HELDOUT_SHORT_BYTES bytes (for byte space, which is much slower), and
      OUT/docs-heldout-640.txt: at most DOCS_HELDOUT_WINDOW_BYTES bytes, a text that
      fits one window of every demo model in both spaces (byte vs token space).
      For `kotara fit` (docs/fitting.md): OUT/docs-dev.txt and OUT/docs-test.txt, the held-out
      docs cut in two at a line boundary (the first whole lines up to half its bytes, and
      the rest), and OUT/docs-dev-2k.txt and OUT/docs-test-2k.txt, the first whole lines of
      each, at most DOCS_HELDOUT_SHORT_BYTES bytes (for byte space).
      data/demo/ is gitignored: this text must never be committed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

# Held-out sizes (characters). Small on purpose: the demo evaluates the held-out
# docs with four models' worth of strategies in well under a minute on 2 cores.
DOCS_HELDOUT_TARGET = 40_000
DOCS_HELDOUT_MAX = 60_000
CODE_HELDOUT_TARGET = 40_000
CODE_HELDOUT_MAX = 60_000
# The short cut of the held-out docs (UTF-8 bytes; whole lines): docs-heldout-2k.txt.
DOCS_HELDOUT_SHORT_BYTES = 2_048
# ... and docs-heldout-640.txt: ~200 tokens of the demo tokenizers, inside their 256 positions
# with the start token, so one window holds it in token space and in byte space.
DOCS_HELDOUT_WINDOW_BYTES = 640
# Cap on the code training text (plenty for a few minutes of CPU training).
CODE_TRAIN_MAX = 4_000_000
# Source files larger than this are mostly data tables, not code.
CODE_FILE_MAX = 200_000

SALT = "kotara-demo-v1"

# Directory names under the stdlib that are not "the standard library's code".
_CODE_SKIP_DIRS = {
    "site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test",
    "encodings", "pydoc_data", "config-3", "lib-dynload", "ensurepip",
    "turtledemo", "__phello__",
}


@dataclass
class Domain:
    name: str
    train: list[tuple[str, str]] = field(default_factory=list)    # (key, text), sorted by key
    heldout: list[tuple[str, str]] = field(default_factory=list)  # (key, text), sorted by key

    @property
    def train_text(self) -> str:
        return join_items(self.train)

    @property
    def heldout_text(self) -> str:
        return join_items(self.heldout)


def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{SALT}:{key}".encode("utf-8")).digest()[:8], "big")


def join_items(items: list[tuple[str, str]]) -> str:
    return "\n\n".join(text.strip("\n") for _, text in items) + "\n"


def split_items(items: dict[str, str], target: int, max_total: int,
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Deterministic split: walk the keys in stable-hash order and hold out items
    until ``target`` characters are held out, never exceeding ``max_total``."""
    order = sorted(items, key=lambda k: (stable_hash(k), k))
    held: set[str] = set()
    total = 0
    for key in order:
        if total >= target:
            break
        size = len(items[key])
        if total + size > max_total:
            continue
        held.add(key)
        total += size
    train = [(k, items[k]) for k in sorted(items) if k not in held]
    heldout = [(k, items[k]) for k in sorted(items) if k in held]
    return train, heldout


_WS = re.compile(r"\s+")


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def _norm(paragraph: str) -> str:
    return _WS.sub(" ", paragraph).strip()


def decontaminate(train: list[tuple[str, str]], heldout: list[tuple[str, str]],
                  ) -> list[tuple[str, str]]:
    """Drop every training paragraph whose whitespace-normalized text occurs in a
    held-out item (only paragraphs long enough to carry content are matched, so
    that e.g. a bare "Changed in version 3.8." line does not count)."""
    banned = {_norm(p) for _, text in heldout for p in _paragraphs(text)}
    banned = {p for p in banned if len(p) >= 40}
    out = []
    for key, text in train:
        kept = [p for p in _paragraphs(text) if _norm(p) not in banned]
        if kept:
            out.append((key, "\n\n".join(kept)))
    return out


def docs_domain() -> Domain:
    from pydoc_data.topics import topics  # ships with CPython (pydoc's help topics)

    items = {k: v for k, v in topics.items() if isinstance(v, str) and v.strip()}
    train, heldout = split_items(items, DOCS_HELDOUT_TARGET, DOCS_HELDOUT_MAX)
    train = decontaminate(train, heldout)
    return Domain("docs", train, heldout)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def code_files(root: Path | None = None) -> dict[str, str]:
    """The standard library's .py sources: {posix path relative to stdlib: text}."""
    root = root or stdlib_dir()
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in _CODE_SKIP_DIRS and not d.startswith("config-") and not d.startswith(".")
        )
        for name in sorted(filenames):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = Path(dirpath) / name
            try:
                if path.is_symlink() or path.stat().st_size > CODE_FILE_MAX:
                    continue
                text = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if not text.strip():
                continue
            out[path.relative_to(root).as_posix()] = text.replace("\r\n", "\n")
    return out


def code_domain(root: Path | None = None) -> Domain:
    items = code_files(root)
    train, heldout = split_items(items, CODE_HELDOUT_TARGET, CODE_HELDOUT_MAX)
    # Cap the training text deterministically (files in stable-hash order).
    capped: list[tuple[str, str]] = []
    total = 0
    for key, text in sorted(train, key=lambda kv: (stable_hash(kv[0]), kv[0])):
        if total >= CODE_TRAIN_MAX:
            break
        capped.append((key, text))
        total += len(text)
    return Domain("code", sorted(capped), heldout)


def domain(name: str) -> Domain:
    if name == "docs":
        return docs_domain()
    if name == "code":
        return code_domain()
    raise ValueError(f"unknown domain {name!r} (known: docs, code)")


def head_lines(text: str, max_bytes: int) -> str:
    """The longest run of whole lines at the head of text (each ending in a newline)
    whose UTF-8 is at most max_bytes; '' when the first line is longer."""
    out, size = [], 0
    for line in text.splitlines(keepends=True):
        n = len(line.encode("utf-8"))
        if not line.endswith("\n") or size + n > max_bytes:
            break
        out.append(line)
        size += n
    return "".join(out)


def halves(text: str) -> tuple[str, str]:
    """text cut at a line boundary: its first whole lines up to half of its UTF-8 bytes, and the rest."""
    first = head_lines(text, len(text.encode("utf-8")) // 2)
    return first, text[len(first):]


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_heldout(out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in ("docs", "code"):
        d = domain(name)
        path = out_dir / f"{name}-heldout.txt"
        _write(path, d.heldout_text)
        written[name] = path
        print(f"{path}: {len(d.heldout)} held-out {'topics' if name == 'docs' else 'files'}, "
              f"{path.stat().st_size} bytes (training part: {len(d.train)} items, "
              f"{len(d.train_text.encode('utf-8'))} bytes)", file=sys.stderr)
        if name == "docs":
            short = out_dir / "docs-heldout-2k.txt"
            _write(short, head_lines(d.heldout_text, DOCS_HELDOUT_SHORT_BYTES))
            written["docs-2k"] = short
            one = out_dir / "docs-heldout-640.txt"
            _write(one, head_lines(d.heldout_text, DOCS_HELDOUT_WINDOW_BYTES))
            written["docs-640"] = one
            for cut in (short, one):
                print(f"{cut}: the first {cut.stat().st_size} bytes of the held-out docs "
                      f"(whole lines)", file=sys.stderr)
            dev_text, test_text = halves(d.heldout_text)
            for part, body in (("dev", dev_text), ("test", test_text)):
                whole = out_dir / f"docs-{part}.txt"
                _write(whole, body)
                cut = out_dir / f"docs-{part}-2k.txt"
                _write(cut, head_lines(body, DOCS_HELDOUT_SHORT_BYTES))
                written[f"docs-{part}"], written[f"docs-{part}-2k"] = whole, cut
                print(f"{whole}: the {part} half of the held-out docs, {whole.stat().st_size} bytes; {cut}: "
                      f"its first {cut.stat().st_size} bytes (whole lines)", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=here / "data" / "demo",
                    help="directory for docs-heldout.txt, docs-heldout-2k.txt and code-heldout.txt "
                         "(default: data/demo)")
    ap.add_argument("--list", action="store_true", help="print the held-out keys of each domain")
    args = ap.parse_args(argv)
    if args.list:
        for name in ("docs", "code"):
            for key, text in domain(name).heldout:
                print(f"{name}\t{key}\t{len(text)}")
        return 0
    write_heldout(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
