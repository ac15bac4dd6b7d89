"""Datasets that are not one plain text file: documents (a list of strings).

Where the documents come from (docs/datasets.md):

- a `.jsonl` file: one JSON object a line, the document in `field` (blank lines are
  skipped). The controller (src/dataset.ts) reads the same file the same way, for
  its byte and word counts; the worker reads it to tokenize.
- a `.parquet` file, or a Hugging Face dataset (`hf`, `name`, `split`, `revision`)
  loaded through the `datasets` library (its cache; HF_DATASETS_OFFLINE=1 is
  honoured, as the library honours it): these are EXPORTED once per run, by
  `python -m kotara_worker.datasets export`, to a `.jsonl` cache file of
  `{"text": document}` lines that the rest of the pipeline reads like any `.jsonl`
  (so checkpoints fingerprint the documents themselves).

How documents become the text that is scored: in stream mode (SPEC §2) they are
joined with `separator` into one text; in documents mode each is scored on its own
(windows.plan_document_windows). A plain text file is one document.

`datasets` and `pyarrow` are imported lazily: only a parquet or hf dataset needs them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

# Python's str `\s` (what lm-evaluation-harness splits words on); src/dataset.ts spells out the same class.
_WORDS = re.compile(r"\s+")
_BLANK = re.compile(r"[ \t\r\n]*")


class DatasetError(ValueError):
    """A dataset that cannot be read as documents (the message names the file and the line)."""


def lm_eval_words(doc: str) -> int:
    """lm-evaluation-harness's word count of a document: len(re.split(r"\\s+", doc))
    (leading or trailing whitespace counts as one more, empty, word)."""
    return len(_WORDS.split(doc))


def read_jsonl(path: str, field: str) -> list[str]:
    """The documents of a .jsonl file: obj[field] of every non-blank line."""
    docs: list[str] = []
    try:
        f = open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DatasetError(f"dataset not found: {path}") from None
    with f:
        try:
            lines = f.read().split("\n")
        except UnicodeDecodeError as e:
            raise DatasetError(f"dataset {path} is not UTF-8 (first bad byte at offset {e.start})") from None
    for i, line in enumerate(lines, 1):
        if _BLANK.fullmatch(line):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{i}: not a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{i}: expected a JSON object with a {field!r} field")
        if field not in obj:
            raise DatasetError(f"{path}:{i}: no field {field!r} (fields: {', '.join(map(str, obj)) or 'none'})")
        if not isinstance(obj[field], str):
            raise DatasetError(f"{path}:{i}: field {field!r} is not a string")
        docs.append(obj[field])
    return docs


def _column(table_or_ds, field: str, where: str) -> list[str]:
    names = list(table_or_ds.column_names)
    if field not in names:
        raise DatasetError(f"{where}: no column {field!r} (columns: {', '.join(names)})")
    values = table_or_ds[field]
    values = values.to_pylist() if hasattr(values, "to_pylist") else list(values)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DatasetError(f"{where}: row {i} of column {field!r} is not a string ({type(v).__name__})")
    return values


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise DatasetError(f"this dataset needs the Python package {module!r}, which {sys.executable} lacks: "
                           f"`{sys.executable} -m pip install {module}`") from None


def read_parquet(path: str, field: str) -> list[str]:
    _need("pyarrow")
    import pyarrow.parquet as pq
    if not os.path.isfile(path):
        raise DatasetError(f"dataset not found: {path}")
    return _column(pq.read_table(path, columns=None), field, path)


def read_hf(hf: str, name: str | None, split: str, field: str, revision: str | None = None) -> list[str]:
    """A split of a dataset through datasets.load_dataset (its cache; HF_DATASETS_OFFLINE=1
    honoured), or a directory written by Dataset.save_to_disk / DatasetDict.save_to_disk."""
    datasets = _need("datasets")
    where = f"{hf}" + (f" ({name})" if name else "") + f", split {split}"
    if os.path.isdir(hf) and (os.path.exists(os.path.join(hf, "dataset_info.json"))
                              or os.path.exists(os.path.join(hf, "dataset_dict.json"))):
        ds = datasets.load_from_disk(hf)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DatasetError(f"{where}: no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(hf, name, split=split, revision=revision)
        except Exception as e:  # noqa: BLE001 - the library's errors are many; the message says what
            raise DatasetError(f"{where}: {type(e).__name__}: {e}") from None
    return _column(ds, field, where)


def load_documents(spec: dict) -> list[str]:
    """Documents from a source spec: {"hf", "name", "split", "revision", "field"} or {"path", "field"}."""
    if spec.get("hf"):
        return read_hf(spec["hf"], spec.get("name"), spec.get("split") or "train", spec["field"], spec.get("revision"))
    path, field = spec["path"], spec.get("field")
    if path.endswith(".parquet"):
        return read_parquet(path, field)
    if path.endswith(".jsonl"):
        return read_jsonl(path, field)
    raise DatasetError(f"{path}: not a .jsonl or .parquet file")


def export(spec: dict, out: str) -> dict:
    """Writes the documents of `spec` to `out` as {"text": doc} lines (atomically)."""
    docs = load_documents(spec)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        for d in docs:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return {"path": out, "documents": len(docs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kotara_worker.datasets",
                                description="export a parquet file or a Hugging Face dataset to a .jsonl of documents")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--spec", required=True, help='JSON: {"hf","name","split","revision","field"} or {"path","field"}')
    e.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        print(json.dumps(export(json.loads(args.spec), args.out)))
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
