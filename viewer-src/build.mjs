// Builds the viewer's front end into ../tracer/viewer/assets/ (viewer.js, viewer.css).
// Reproducible: pinned dependencies (package-lock.json), no timestamps, no source maps.
//   npm ci && npm run build
import { build } from "esbuild";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
// TRACER_VIEWER_OUT lets a test build elsewhere and compare with the committed assets.
const out = process.env.TRACER_VIEWER_OUT || join(here, "..", "tracer", "viewer", "assets");
mkdirSync(out, { recursive: true });

const res = await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  minify: true,
  format: "iife",
  target: ["chrome110", "firefox115", "safari16"],
  platform: "browser",
  legalComments: "eof",
  charset: "ascii",          // inline-safe: no raw U+2028/2029 or other non-ASCII in the bundle
  write: false,
  logLevel: "warning",
});
let js = res.outputFiles[0].text;
// The bundle is inlined in a <script> element: it must not contain "</script" or "<!--".
// Both only occur inside string and regex literals, where "\/" and "\x21" mean the same characters.
js = js.replace(/<\/(script)/gi, "<\\/$1").replace(/<!--/g, "<\\x21--");
if (/<\/script|<!--/i.test(js)) throw new Error("bundle cannot be inlined safely");
writeFileSync(join(out, "viewer.js"), js);
writeFileSync(join(out, "viewer.css"), readFileSync(join(here, "src", "style.css"), "utf8"));
console.log(`viewer.js ${js.length} bytes -> ${out}`);
