// Sequential requests from Node (fetch/undici over Node's static OpenSSL), each timed in-process
// from the call to the last body byte. usage: node node_seq_client.mjs BASE_URL N [--json] [--go-file F]
// Prints "warm" on stderr after the 10 warm-up requests and "done" after the last one (a bench
// can take its CPU and BPF figures for exactly the timed requests), the times on stdout at the end.
import { existsSync } from "node:fs";
const [base, nStr, ...rest] = process.argv.slice(2);
const n = Number(nStr);
const stream = !rest.includes("--json");
const gi = rest.indexOf("--go-file");
if (gi >= 0) { while (!existsSync(rest[gi + 1])) await new Promise((r) => setTimeout(r, 10)); }
const body = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 256, stream,
  messages: [{ role: "user", content: "benchmark" }] });
const times = [];
for (let i = 0; i < n + 10; i++) {
  const t0 = process.hrtime.bigint();
  const res = await fetch(`${base}/v1/messages`, { method: "POST", body,
    headers: { "content-type": "application/json", "x-api-key": "sk-bench" } });
  await res.arrayBuffer();
  const dt = Number(process.hrtime.bigint() - t0) / 1e3;
  if (i >= 10) times.push(dt);   // first 10: warm-up (JIT, connection)
  if (i === 9) process.stderr.write("warm\n");
}
process.stderr.write("done\n");
console.log(JSON.stringify(times));
