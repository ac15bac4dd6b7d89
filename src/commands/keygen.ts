// `kotara keygen FILE [--force]`: a key file for a remote worker (src/keys.ts), mode 0600,
// and how to use it on both machines.
import { generateKeys, writeKeyFile } from "../keys.js";

export async function keygenCommand(file: string, opts: { force?: boolean } = {}): Promise<void> {
  writeKeyFile(file, generateKeys(), { force: opts.force ?? false });
  process.stdout.write(
    `wrote ${file} (mode 600): two CURVE keypairs and an HMAC key; whoever holds it can use the worker, so keep it secret\n` +
    `copy it to the worker's machine over ssh (scp ${file} gpu-box:${file}), never through a command line or a chat, then:\n` +
    `  on the worker's machine:  kotara worker --listen tcp://0.0.0.0:5555 --key-file ${file}\n` +
    `  on this machine, in the config:  runtime: { workers: [{ connect: "tcp://gpu-box:5555", key_file: ${file} }] }\n`,
  );
}
