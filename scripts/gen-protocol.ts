// Generates protocol/schema.json and protocol/golden/ from src/protocol.ts, the one
// definition of the wire protocol. Run `npm run protocol:gen` after changing it;
// test/protocol.test.ts fails while the committed files are stale.
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { encode } from "@msgpack/msgpack";
import { GOLDEN_MESSAGES, protocolJsonSchema } from "../src/protocol-schema.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
mkdirSync(join(root, "protocol", "golden"), { recursive: true });
writeFileSync(join(root, "protocol", "schema.json"), JSON.stringify(protocolJsonSchema(), null, 2) + "\n");
for (const [name, message] of Object.entries(GOLDEN_MESSAGES)) {
  writeFileSync(join(root, "protocol", "golden", `${name}.msgpack`), encode(message));
  writeFileSync(join(root, "protocol", "golden", `${name}.json`), JSON.stringify(message, null, 2) + "\n");
}
console.log(`wrote protocol/schema.json and ${Object.keys(GOLDEN_MESSAGES).length} golden messages`);
