// The key file of a remote worker (`kotara keygen`): two CURVE keypairs (the listening
// worker is the CURVE server, the controller its one allowed client) and the HMAC key
// that signs every message, as a local worker's session key does. The same file goes
// to both machines; python/kotara_worker/listen.py reads it there.
import { createPrivateKey, createPublicKey, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { curveKeyPair } from "zeromq";
import { z } from "zod";
import { UserError } from "./errors.js";

const Z85_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
const z85Key = z.string().length(40, "must be a CURVE key in Z85 (40 characters)")
  .refine((s) => [...s].every((c) => Z85_ALPHABET.includes(c)), "must be a CURVE key in Z85 (40 characters)");

export const KeyFile = z.strictObject({
  kotara_key: z.literal(1, "must be 1 (this is not a key file from `kotara keygen`)"),
  server_public: z85Key,
  server_secret: z85Key,
  client_public: z85Key,
  client_secret: z85Key,
  hmac: z.string().regex(/^[0-9a-f]{64}$/, "must be 64 hexadecimal digits (32 bytes)"),
});
export type KeyFile = z.infer<typeof KeyFile>;

export function generateKeys(): KeyFile {
  const server = curveKeyPair();
  const client = curveKeyPair();
  return {
    kotara_key: 1,
    server_public: server.publicKey, server_secret: server.secretKey,
    client_public: client.publicKey, client_secret: client.secretKey,
    hmac: randomBytes(32).toString("hex"),
  };
}

/** Write a new key file, readable by its owner only; an existing file only with `force`. */
export function writeKeyFile(path: string, keys: KeyFile, { force = false } = {}): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  // Replacing removes the old file first: "wx" then creates it 0600, never with the old
  // file's (maybe wider) mode for a moment.
  if (force) rmSync(path, { force: true });
  try {
    writeFileSync(path, JSON.stringify(keys, null, 2) + "\n", { mode: 0o600, flag: "wx" });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") throw new UserError(`${path}: already exists; pass --force to replace it (both machines then need the new file)`, 2);
    throw new UserError(`${path}: cannot write it: ${(e as Error).message}`, 2);
  }
}

/** A key file, checked; `warning` when others than its owner may read it. Errors are `path: message` (exit 2). */
export function readKeyFile(path: string): { keys: KeyFile; warning: string | null } {
  let text: string;
  let mode: number;
  try {
    text = readFileSync(path, "utf8");
    mode = statSync(path).mode;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new UserError(`${path}: no such file (make one with \`kotara keygen ${path}\` and copy it to both machines)`, 2);
    if (code === "EISDIR") throw new UserError(`${path}: is a directory, not a key file`, 2);
    throw new UserError(`${path}: cannot read it: ${(e as Error).message}`, 2);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${path}: not a kotara key file (not JSON: ${(e as Error).message})`, 2);
  }
  const parsed = KeyFile.safeParse(doc);
  if (!parsed.success) {
    throw new UserError(parsed.error.issues.map((i) => `${path}: ${i.path.join(".") || "(file)"}: ${i.message}`).join("\n"), 2);
  }
  const keys = parsed.data;
  for (const side of ["server", "client"] as const) {
    if (curvePublic(keys[`${side}_secret`]) !== keys[`${side}_public`]) {
      throw new UserError(`${path}: ${side}_public: does not belong to ${side}_secret (was the file edited?)`, 2);
    }
  }
  const warning = process.platform !== "win32" && mode & 0o077
    ? `${path}: others than its owner may read it (mode ${(mode & 0o777).toString(8)}); it holds secret keys: chmod 600 ${path}`
    : null;
  return { keys, warning };
}

/** The Z85 public key of a Z85 CURVE secret key (X25519, as libzmq's zmq_curve_public). */
export function curvePublic(secretZ85: string): string {
  // PKCS#8 of a raw X25519 private key: this fixed DER prefix, then its 32 bytes
  const der = Buffer.concat([Buffer.from("302e020100300506032b656e04220420", "hex"), z85Decode(secretZ85)]);
  const jwk = createPublicKey(createPrivateKey({ key: der, format: "der", type: "pkcs8" })).export({ format: "jwk" });
  return z85Encode(Buffer.from(jwk.x!, "base64url"));
}

function z85Decode(s: string): Buffer {
  const out = Buffer.alloc((s.length / 5) * 4);
  for (let i = 0; i < s.length; i += 5) {
    let v = 0;
    for (let j = 0; j < 5; j++) v = v * 85 + Z85_ALPHABET.indexOf(s[i + j]);
    out.writeUInt32BE(v >>> 0, (i / 5) * 4);
  }
  return out;
}

function z85Encode(b: Buffer): string {
  let s = "";
  for (let i = 0; i < b.length; i += 4) {
    let v = b.readUInt32BE(i);
    let chunk = "";
    for (let j = 0; j < 5; j++, v = Math.floor(v / 85)) chunk = Z85_ALPHABET[v % 85] + chunk;
    s += chunk;
  }
  return s;
}
