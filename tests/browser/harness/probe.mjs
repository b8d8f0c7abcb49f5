// Opens a viewer page in headless Chromium (Debian's), exercises it and prints what it saw as JSON.
//   node probe.mjs PAGE.html [--screenshot OUT.png] [--shots-dir DIR] [--timing-only]
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
const page_path = resolve(args[0]);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : null;
};
const timingOnly = args.includes("--timing-only");
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = mkdtempSync(join(tmpdir(), "tracer-chromium-"));

const out = { consoleErrors: [], pageErrors: [], requests: [], dialogs: 0 };
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--no-first-run"],
    viewport: { width: 1400, height: 1000 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") out.consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => out.pageErrors.push(String(e)));
  page.on("dialog", async (d) => { out.dialogs++; await d.dismiss(); });
  page.on("request", (r) => { const u = r.url(); if (!u.startsWith("file:") && !u.startsWith("data:")) out.requests.push(u); });

  const t0 = Date.now();
  await page.goto(pathToFileURL(page_path).href + (opt("--hash") || ""), { waitUntil: "commit" });
  await page.waitForSelector(".conversation .msg", { timeout: 60000 });
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  out.firstConversationMs = Date.now() - t0;
  out.inPage = await page.evaluate(() => {
    const nav = performance.getEntriesByType("navigation")[0] || {};
    const paint = Object.fromEntries(performance.getEntriesByType("paint").map((p) => [p.name, Math.round(p.startTime)]));
    return { appRendered: window.__tracerViewer && Math.round(window.__tracerViewer.painted),
      paintedAt: Math.round(performance.now()), readyState: document.readyState,
      domInteractive: Math.round(nav.domInteractive || 0), domContentLoaded: Math.round(nav.domContentLoadedEventEnd || 0), paint };
  });
  out.firstMessagePaintMs = await page.evaluate(() => new Promise((resolve) => {
    // Element Timing: when the first message of the first conversation was painted (ms since navigation).
    const obs = new PerformanceObserver((list) => {
      const e = list.getEntries().find((x) => x.identifier === "first-message");
      if (e) { obs.disconnect(); resolve(Math.round(e.renderTime || e.loadTime)); }
    });
    obs.observe({ type: "element", buffered: true });
    setTimeout(() => resolve(null), 5000);
  }));
  await page.waitForLoadState("load", { timeout: 120000 });
  out.loadMs = Date.now() - t0;
  out.sessions = await page.locator(".session-item").count();
  out.activeSession = await page.locator(".session-item.active").getAttribute("data-session").catch(() => null);
  out.headline = await page.locator("h2.s-head").first().innerText().catch(() => null);
  if (args.includes("--open-all")) {
    // Open every collapsible section in every session and view: renderers meet every odd record.
    const openAll = async () => {
      for (let round = 0; round < 4; round++) {
        const n = await page.evaluate(() => {
          const closed = [...document.querySelectorAll("details:not([open])")];
          closed.forEach((d) => { d.open = true; });
          document.querySelectorAll("button.more").forEach((b) => b.click());
          return closed.length;
        });
        await page.waitForTimeout(50);
        if (!n) break;
      }
    };
    const nSessions = await page.locator(".session-item").count();
    out.opened = [];
    for (let k = 0; k < nSessions; k++) {
      await page.locator(".session-item").nth(k).click();
      await openAll();
      out.opened.push(await page.locator("main").innerText());
    }
    for (const view of ["raw", "json"]) {
      await page.locator(`button.tab[data-view="${view}"]`).click();
      await openAll();
      out.opened.push(await page.locator("main").innerText());
    }
    out.xss = await page.evaluate(() => window.__xss || 0);
  } else if (!timingOnly) {
    out.conversationText = await page.locator(".conversation").innerText();
    out.toolNames = await page.locator(".conversation .tool-name").allInnerTexts();
    out.hasModelFilter = (await page.locator("select.model-filter").count()) > 0;
    // Subagent conversation, opened on demand.
    const sub = page.locator("details.subagent > summary").first();
    if (await sub.count()) {
      await sub.click();
      out.subagentText = await page.locator("details.subagent .thread").first().innerText();
    }
    // The calls table.
    await page.locator("details.calls-box > summary").click();
    await page.waitForSelector("table.calls tbody tr");
    out.callRows = await page.locator("table.calls tbody tr").count();
    const shot = opt("--screenshot");
    if (shot) await page.screenshot({ path: shot, fullPage: true });
    // Second session (compaction), if any.
    if (out.sessions > 1) {
      await page.locator(".session-item").nth(1).click();
      await page.waitForSelector(".conversation .msg");
      out.session2Text = await page.locator(".conversation").innerText();
      out.compactedMarkers = await page.locator(".compacted").count();
      const shot2 = opt("--screenshot2");
      if (shot2) await page.screenshot({ path: shot2, fullPage: true });
    }
    // Raw calls view.
    await page.locator('button.tab[data-view="raw"]').click();
    out.rawRows = await page.locator("details.call").count();
    await page.locator("details.call > summary").first().click();
    await page.waitForSelector("details.call .details-body h4");
    out.rawFirst = await page.locator("details.call").first().innerText();
    // JSON debug view.
    await page.locator('button.tab[data-view="json"]').click();
    out.jsonRows = await page.locator("details.call").count();
    await page.locator("details.call > summary").nth(1).click();
    await page.waitForSelector("details.call:nth-child(2) .details-body pre");
    out.jsonSecond = await page.locator("details.call").nth(1).innerText();
    const shot3 = opt("--screenshot3");
    if (shot3) await page.screenshot({ path: shot3 });
    // Model filter narrows the raw list.
    if (out.hasModelFilter) {
      const models = await page.locator("select.model-filter option").allInnerTexts();
      await page.selectOption("select.model-filter", models[1]);
      out.filteredJsonRows = await page.locator("details.call").count();
      out.filterModel = models[1];
    }
    // Click the markdown link whose target is javascript: (the sanitiser must have dropped it).
    await page.locator('button.tab[data-view="conversations"]').click();
    const link = page.locator(".conversation a", { hasText: "see the docs" });
    out.jsLinkCount = await link.count();
    if (out.jsLinkCount) {
      out.jsLinkHref = await link.first().getAttribute("href");
      await link.first().click({ modifiers: [] }).catch(() => {});
      await page.waitForTimeout(200);
    }
    out.xss = await page.evaluate(() => window.__xss || 0);
    out.imgOnerror = await page.evaluate(() => document.querySelectorAll('[onerror],[onload],#app script,#app iframe,a[href^="javascript" i]').length);
  }
} catch (e) {
  out.fatal = String(e && e.stack || e);
} finally {
  if (context) await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out));
