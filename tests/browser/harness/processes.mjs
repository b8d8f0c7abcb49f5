// The process panel of a viewer page, in headless Chromium (Debian's).
//   node processes.mjs PAGE.html
// Prints JSON: the panel's summary line and, after opening it, each process line and its depth.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const userDataDir = mkdtempSync(join(tmpdir(), "tracer-chromium-"));
const out = { consoleErrors: [], pageErrors: [], requests: [] };
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => out.pageErrors.push(String(e)));
  page.on("request", (r) => { const u = r.url(); if (!u.startsWith("file:") && !u.startsWith("data:")) out.requests.push(u); });
  await page.goto(pathToFileURL(resolve(process.argv[2])).href, { waitUntil: "load" });
  await page.waitForSelector("header.top", { timeout: 60000 });
  out.panels = await page.locator("details.procs").count();
  if (out.panels) {
    out.summary = await page.locator("details.procs > summary").innerText();
    await page.locator("details.procs > summary").click();
    out.lines = await page.evaluate(() => [...document.querySelectorAll("details.procs li")].map((li) => {
      let depth = 0;
      for (let e = li.parentElement; e && !e.matches("details"); e = e.parentElement) if (e.tagName === "UL") depth++;
      return { depth, text: [...li.childNodes].filter((n) => n.tagName !== "UL").map((n) => n.textContent).join("").trim() };
    }));
  }
} catch (e) {
  out.fatal = String((e && e.stack) || e);
} finally {
  if (context) await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out));
