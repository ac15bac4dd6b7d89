// User input → `path: message` lines: the small zod helpers every schema of the
// config (config.ts, strategies.ts, sweep.ts) shares. A problem is never a stack
// trace: it is the path of the field and what is allowed there.
import { z } from "zod";

/** A value checked, with its problems as `path: message` lines (empty when valid). */
export interface Checked<T> {
  value: T;
  lines: string[];
}

/**
 * `z.strictObject` whose unknown-key issue lists the keys allowed there; the
 * issue lines then read `dataset.srtide: unknown key; allowed: path, max_length, …`.
 */
export function strictObject<T extends z.core.$ZodLooseShape>(shape: T) {
  const allowed = Object.keys(shape).join(", ");
  return z.strictObject(shape, {
    error: (iss) => (iss.code === "unrecognized_keys" ? `unknown key; allowed: ${allowed}` : undefined),
  });
}

/** A short, quoted rendering of a user's value for messages. */
export function show(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (typeof value === "string") return JSON.stringify(value.length > 60 ? value.slice(0, 57) + "..." : value);
  if (typeof value === "number") return Number.isNaN(value) ? "NaN" : String(value);
  if (typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (Array.isArray(value)) return `a list (${value.length} item${value.length === 1 ? "" : "s"})`;
  if (typeof value === "object") return "a mapping";
  return typeof value;
}

const TYPE_WORDS: Record<string, string> = {
  number: "a number",
  int: "an integer",
  string: "a string",
  boolean: "true or false",
  object: "a mapping",
  array: "a list",
  null: "null",
};

/** Error map passed to every `safeParse` of user input: plain-English messages. */
export const errorMap: z.core.$ZodErrorMap = (iss) => {
  const input = iss.input;
  switch (iss.code) {
    case "invalid_type": {
      if (input === undefined) return `required (${TYPE_WORDS[iss.expected] ?? iss.expected})`;
      if (typeof input === "number" && (iss.expected === "number" || iss.expected === "int")) {
        if (!Number.isFinite(input)) return `must be a finite number, got ${show(input)}`;
        if (iss.expected === "int") return `must be an integer, got ${show(input)}`;
      }
      return `expected ${TYPE_WORDS[iss.expected] ?? iss.expected}, got ${show(input)}`;
    }
    case "too_small": {
      const min = Number(iss.minimum);
      if (iss.origin === "array") return `must have at least ${min} item${min === 1 ? "" : "s"}`;
      if (iss.origin === "string") return "must not be empty";
      return `must be ${iss.inclusive ? "≥" : ">"} ${min}, got ${show(input)}`;
    }
    case "too_big": {
      const max = Number(iss.maximum);
      if (iss.origin === "array") return `must have at most ${max} item${max === 1 ? "" : "s"}`;
      if (iss.origin === "string") return `must be at most ${max} characters`;
      return `must be ${iss.inclusive ? "≤" : "<"} ${max}, got ${show(input)}`;
    }
    case "invalid_value":
      return `must be ${iss.values.length === 1 ? show(iss.values[0]) : `one of: ${iss.values.map((v) => String(v)).join(", ")}`}, got ${show(input)}`;
    case "unrecognized_keys":
      return "unknown key";
    default:
      return undefined;
  }
};

/** `a.b[0].c`; keys that are not plain identifiers are quoted: `a["odd key"]`. */
export function formatPath(base: string, path: readonly PropertyKey[]): string {
  let out = base;
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (typeof seg === "string" && /^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(String(seg))}]`;
  }
  return out || "(root)";
}

/** zod issues → `path: message` lines (one line per unknown key). */
export function issueLines(error: z.ZodError, base = ""): string[] {
  const lines: string[] = [];
  for (const iss of error.issues) {
    if (iss.code === "unrecognized_keys") {
      for (const key of iss.keys) lines.push(`${formatPath(base, [...iss.path, key])}: ${iss.message}`);
    } else {
      lines.push(`${formatPath(base, iss.path)}: ${iss.message}`);
    }
  }
  return lines;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

