// Search, cost and "what changed" in a viewer page, in headless Chromium (Debian's).
//   node features.mjs PAGE.html QUERY [QUERY ...] [--changes CALL] [--timing] [--processes]
// Prints JSON: the header's cost, each session's cost, per query the matches, the first result's label
// and what got highlighted after clicking it; with --changes, the "what changed" view of that call;
// with --processes, the process panel's summary and, opened, each process line with its depth.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const page_path = resolve(args[0]);
const queries = [];
let changes = null;
let processes = false;
for (let i = 1; i < args.length; i++) {
  if (args[i] === "--changes") changes = Number(args[++i]);
  else if (args[i] === "--processes") processes = true;
  else if (!args[i].startsWith("--")) queries.push(args[i]);
}
const userDataDir = mkdtempSync(join(tmpdir(), "tracer-chromium-"));
const out = { consoleErrors: [], pageErrors: [], requests: [], queries: {} };
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
    viewport: { width: 1400, height: 1000 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => out.pageErrors.push(String(e)));
  page.on("request", (r) => { const u = r.url(); if (!u.startsWith("file:") && !u.startsWith("data:")) out.requests.push(u); });
  await page.goto(pathToFileURL(page_path).href, { waitUntil: "load" });
  await page.waitForSelector(".conversation .msg", { timeout: 60000 });
  out.headerCost = await page.locator(".cost-total").innerText();
  out.priceDate = await page.locator(".price-date").innerText();
  out.priceTitle = await page.locator(".cost-total").getAttribute("title");
  out.sessionCosts = await page.locator(".session-item .s-meta:nth-child(3)").allInnerTexts();
  out.statCost = await page.locator(".stat", { hasText: "cost" }).first().innerText();
  await page.locator("details.calls-box > summary").click();
  await page.waitForSelector("table.calls tbody tr");
  out.callCosts = await page.locator("table.calls td.cost").allInnerTexts();
  out.callChanges = await page.locator("table.calls td.changes").allInnerTexts();
  for (const q of queries) {
    const t0 = Date.now();
    await page.fill("input.search-input", q);
    await page.press("input.search-input", "Enter");
    await page.waitForFunction(() => { const h = document.querySelector(".search-results .search-head"); return h && /match/.test(h.textContent); }, null, { timeout: 60000 });
    const r = { ms: Date.now() - t0 };
    r.head = await page.locator(".search-results .search-head").innerText();
    r.labels = await page.locator(".search-results .hit-where").allInnerTexts();
    r.cutNote = (await page.locator(".search-results .cut-note").count()) > 0;
    if (r.labels.length) {
      await page.locator(".search-results .hit a").first().click();
      await page.waitForFunction(() => window.__tracerViewer && window.__tracerViewer.lastHighlight, null, { timeout: 20000 }).catch(() => {});
      r.highlight = await page.evaluate(() => window.__tracerViewer.lastHighlight || null);
      r.marksVisible = await page.locator("mark.search-hit").first().isVisible().catch(() => false);
      r.view = await page.evaluate(() => document.querySelector("main").className);
      await page.evaluate(() => { window.__tracerViewer.lastHighlight = null; });
    }
    out.queries[q] = r;
  }
  if (processes) {
    out.panels = await page.locator("details.procs").count();
    if (out.panels) {
      out.procSummary = await page.locator("details.procs > summary").innerText();
      await page.locator("details.procs > summary").click();
      out.procLines = await page.evaluate(() => [...document.querySelectorAll("details.procs li")].map((li) => {
        let depth = 0;
        for (let e = li.parentElement; e && !e.matches("details"); e = e.parentElement) if (e.tagName === "UL") depth++;
        return { depth, text: [...li.childNodes].filter((n) => n.tagName !== "UL").map((n) => n.textContent).join("").trim() };
      }));
    }
  }
  if (changes !== null) {
    await page.evaluate((n) => { location.hash = "#call=" + n; }, changes);
    await page.waitForSelector(`#call-${changes} .changes-view`, { timeout: 20000 });
    out.changes = await page.locator(`#call-${changes} .changes-view`).innerText();
  }
} catch (e) {
  out.fatal = String((e && e.stack) || e);
} finally {
  if (context) await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out));
