// Opens any HTML page in headless Chromium (Debian's) and prints its visible text, console errors and
// page errors as JSON once the page has rendered.   node text_probe.mjs PAGE.html [--wait-ms N]
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const waitMs = args.includes("--wait-ms") ? Number(args[args.indexOf("--wait-ms") + 1]) : 3000;
const userDataDir = mkdtempSync(join(tmpdir(), "tracer-chromium-"));
const out = { consoleErrors: [], pageErrors: [] };
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run"],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => out.pageErrors.push(String(e)));
  await page.goto(pathToFileURL(resolve(args[0])).href, { waitUntil: "load" });
  await page.waitForTimeout(waitMs);
  out.text = await page.evaluate(() => document.body.innerText);
  if (args.includes("--screenshot")) await page.screenshot({ path: args[args.indexOf("--screenshot") + 1], fullPage: true });
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(out));
