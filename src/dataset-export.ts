// Datasets the controller cannot read itself: a .parquet file, or a Hugging Face dataset
// (through the `datasets` library, its cache, HF_DATASETS_OFFLINE=1 honoured). Before a
// run the worker's Python exports the documents (`python -m kotara_worker.datasets
// export`) to a .jsonl cache file of {"text": document} lines, in Kotara's cache
// (<cache>/datasets/<sha256 of the source>.jsonl); from then on the run reads that file
// like any .jsonl: the controller for bytes, words and the checkpoint's hash (so a
// changed dataset does not resume an old checkpoint), the worker to tokenize.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { UserError } from "./errors.js";
import { resolvePython, userCacheDir } from "./python-env.js";
import { PACKAGE_ROOT, PYTHON_DIR } from "./worker.js";

/** A Hugging Face dataset (Hub id or save_to_disk directory) or a parquet file, and the column of its text. */
export type DatasetSource =
  | { hf: string; name: string | null; split: string; revision: string | null; field: string }
  | { path: string; field: string };

/** Where a source's documents are exported to (the same source: the same file). */
export function exportPath(source: DatasetSource, cacheDir: string = userCacheDir()): string {
  const key = createHash("sha256").update(JSON.stringify(source)).digest("hex").slice(0, 32);
  return join(cacheDir, "datasets", `${key}.jsonl`);
}

/**
 * Exports a source's documents to `out` with the worker's Python (re-exported every run:
 * the `datasets` cache makes that cheap, and a changed parquet file is read anew).
 * @throws UserError (exit 2) with the exporter's message.
 */
export function exportDataset(source: DatasetSource, out: string, python: string | null): { documents: number } {
  const py = resolvePython(python);
  const r = spawnSync(py, ["-m", "kotara_worker.datasets", "export", "--spec", JSON.stringify(source), "--out", out], {
    cwd: PACKAGE_ROOT,
    env: { ...process.env, PYTHONPATH: [PYTHON_DIR, process.env.PYTHONPATH].filter(Boolean).join(":") },
    encoding: "utf8",
  });
  if (r.error) throw new UserError(`dataset: cannot run ${py} to export the dataset: ${r.error.message}`, 2);
  if (r.status !== 0) {
    const msg = r.stderr.trim().split("\n").filter(Boolean).pop()?.replace(/^error: /, "") ?? `exit ${r.status}`;
    throw new UserError(`dataset: ${msg}`, 2);
  }
  return JSON.parse(r.stdout.trim().split("\n").pop()!) as { documents: number };
}
