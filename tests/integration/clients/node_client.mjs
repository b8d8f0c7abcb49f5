// Node client (fetch/undici -> Node's static OpenSSL SSL_read/SSL_write) for integration tests.
// usage: node node_client.mjs BASE_URL [--stream] [--json] [--count N] [--go-file PATH]
// The CA comes from NODE_EXTRA_CA_CERTS. Prints one JSON line per response.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";

const argv = process.argv.slice(2);
const base = argv[0];
const flag = (f) => argv.includes(f);
const opt = (f, d) => (argv.indexOf(f) >= 0 ? argv[argv.indexOf(f) + 1] : d);
const count = Number(opt("--count", "1"));
const goFile = opt("--go-file", null);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

if (goFile) { while (!existsSync(goFile)) await sleep(20); }
const modes = [];
if (flag("--stream")) modes.push(true);
if (flag("--json") || modes.length === 0) modes.push(false);

for (let i = 0; i < count; i++) {
  for (const stream of modes) {
    const body = JSON.stringify({
      model: "claude-sonnet-4-5", max_tokens: 256, stream,
      messages: [{ role: "user", content: `hello from node #${i}` }],
    });
    const res = await fetch(`${base}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": "sk-ant-api03-nodesecretnodesecret",
                 "anthropic-version": "2023-06-01" },
      body,
    });
    const buf = Buffer.from(await res.arrayBuffer());
    console.log(JSON.stringify({ status: res.status, record: res.headers.get("x-mock-record-id"),
      sha256: createHash("sha256").update(buf).digest("hex"), len: buf.length }));
  }
}
