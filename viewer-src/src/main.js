// tracer's HTML viewer. Everything shown comes from the log and is untrusted: it reaches the DOM only
// as text nodes, or as markdown rendered by marked and then sanitised by DOMPurify.
import { marked } from "marked";
import DOMPurify from "dompurify";
import { diffLines } from "diff";

// ------------------------------------------------------------------------------------------ data

const SUMMARY = JSON.parse(document.getElementById("tracer-summary").textContent);
const CALLS = SUMMARY.calls;
const THREADS = SUMMARY.threads;
const SESSIONS = SUMMARY.sessions;
const blobCache = new Map();

function loaded() {
  return document.readyState !== "loading";
}
function whenLoaded(fn) {
  if (loaded()) fn();
  else document.addEventListener("DOMContentLoaded", fn, { once: true });
}
function hasBlob(id) {
  return blobCache.has(id) || document.getElementById(id) !== null;
}
function blob(id) {
  if (blobCache.has(id)) return blobCache.get(id);
  const el = document.getElementById(id);
  if (!el) return undefined;
  const v = JSON.parse(el.textContent);
  blobCache.set(id, v);
  return v;
}
function message(id) {
  return blob("m" + id);
}
// The call as logged, with its request messages restored.
function callRecord(i) {
  const b = blob("c" + i);
  if (!b) return undefined;
  if (b.msgref && !b._restored) {
    b.msgIds = b.request.body.messages;
    const body = Object.assign({}, b.request.body);
    body.messages = body.messages.map(message);
    b.request = Object.assign({}, b.request, { body });
    b._restored = true;
  }
  return b;
}
// Run fn once the blobs of the given calls exist (they may still be arriving while the page parses).
function withCalls(ids, fn) {
  if (ids.every((i) => hasBlob("c" + i)) || loaded()) fn();
  else whenLoaded(fn);
}
function responseMessage(i) {
  const b = callRecord(i);
  if (!b) return null;
  if (b.rebuilt) return b.rebuilt;
  const body = b.response && b.response.body;
  if (body && typeof body === "object" && (body.type === "message" || Array.isArray(body.content))) return body;
  return null;
}

// ----------------------------------------------------------------------------------------- utils

// Append children, skipping null/undefined/false (Node.append would print them as text).
function put(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "text") el.textContent = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    }
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
function fmtTok(n) {
  if (!n) return "0";
  if (n < 1000) return String(n);
  if (n < 1e6) return (n / 1000).toFixed(n < 1e4 ? 1 : 0) + "k";
  return (n / 1e6).toFixed(2) + "M";
}
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  const m = Math.floor(ms / 60000);
  return m + " min " + Math.round((ms % 60000) / 1000) + " s";
}
function fmtTime(t) {
  if (t === null || t === undefined) return "–";
  const d = new Date(t * 1000);
  return d.toISOString().replace("T", " ").slice(0, 19) + "Z";
}
function fmtTps(x) {
  return x === null || x === undefined ? "–" : x.toFixed(x < 10 ? 1 : 0);
}
// Cost: computed at build time from the embedded price table (genai-prices); null = unknown.
const PRICES = SUMMARY.prices || { models: {}, unknown: [] };
function fmtUsd(x) {
  if (x === null || x === undefined) return "unknown";
  if (x === 0) return "$0";
  if (x < 0.01) return "$" + x.toFixed(4);
  if (x < 100) return "$" + x.toFixed(2);
  return "$" + Math.round(x).toLocaleString("en-US");
}
// Sum of the calls' costs; calls with tokens but no known price are counted, never guessed.
function costOf(ids) {
  let sum = 0, unknown = 0;
  for (const i of ids) {
    const c = CALLS[i];
    if (c.kind !== "messages") continue;
    if (c.cost === null || c.cost === undefined) { if (c.in || c.out || c.model) unknown++; } else sum += c.cost;
  }
  return { sum, unknown };
}
function fmtCost(ids) {
  const { sum, unknown } = costOf(ids);
  if (!unknown) return fmtUsd(sum);
  if (!sum) return "unknown";
  return `${fmtUsd(sum)} + ${unknown} unknown`;
}
function priceNote() {
  const used = Object.values(PRICES.models || {}).map((m) => m.name || m.id);
  return `Prices: ${PRICES.source || "?"}, table dated ${PRICES.date || "?"}` +
    (used.length ? `; models priced: ${used.join(", ")}` : "") +
    ((PRICES.unknown || []).length ? `; not in the table (cost unknown): ${PRICES.unknown.join(", ")}` : "");
}
function json(v) {
  try {
    return JSON.stringify(v, null, 2);
  } catch (e) {
    return String(v);
  }
}
function shortModel(m) {
  return (m || "").replace(/^claude-/, "");
}

// A <details> whose body is built on first open.
function lazyDetails(summary, build, opts = {}) {
  const sum = h("summary", null, summary);
  const d = h("details", { class: opts.class || "" }, sum);
  let built = false;
  const doBuild = () => {
    if (built) return;
    built = true;
    const body = h("div", { class: "details-body" });
    d.append(body);
    build(body);
  };
  d.addEventListener("toggle", () => d.open && doBuild());
  d._build = doBuild;
  if (opts.open) {
    d.open = true;
    doBuild();
  }
  return d;
}

const PREVIEW_LINES = 40;
// Preformatted text, cut to its first lines with a button for the rest.
function pre(text, cls = "") {
  text = text === undefined || text === null ? "" : String(text);
  const lines = text.split("\n");
  const el = h("pre", { class: "pre " + cls });
  if (lines.length <= PREVIEW_LINES + 5 && text.length <= 20000) {
    el.textContent = text;
    return el;
  }
  let head = lines.slice(0, PREVIEW_LINES).join("\n");
  if (head.length > 20000) head = head.slice(0, 20000);
  el.textContent = head;
  const more = h("button", { class: "more", type: "button" },
    `show all (${fmtInt(lines.length)} lines, ${fmtInt(text.length)} chars)`);
  more.addEventListener("click", () => {
    el.textContent = text;
    more.remove();
  });
  return h("div", { class: "pre-wrap" }, el, more);
}

// ------------------------------------------------------------------------------------- markdown

// Raw HTML inside markdown is shown as text (what the model or tool actually wrote), and only embedded
// images are rendered, so nothing in a message is parsed as markup or fetched, even by the sanitiser's
// own parsing. DOMPurify then cleans what marked produced, as a second line of defence.
const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
marked.use({
  gfm: true,
  breaks: false,
  renderer: {
    html(token) {
      return escapeHtml(token.text !== undefined ? token.text : token.raw || "");
    },
    image(token) {
      const href = String(token.href || "");
      if (/^data:image\/(png|jpe?g|gif|webp);base64,[A-Za-z0-9+/=]+$/i.test(href)) {
        return `<img src="${escapeHtml(href)}" alt="${escapeHtml(token.text || "")}">`;
      }
      return escapeHtml(`[image: ${token.text || ""}](${href})`);
    },
  },
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  // Only embedded images: nothing may be fetched from the network.
  if (node.hasAttribute && node.hasAttribute("src") && !/^data:image\/(png|jpe?g|gif|webp);/i.test(node.getAttribute("src"))) {
    node.removeAttribute("src");
  }
  if (node.hasAttribute && node.hasAttribute("srcset")) node.removeAttribute("srcset");
});
const PURIFY = {
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed", "link", "meta", "base", "svg", "math"],
  FORBID_ATTR: ["style", "srcset", "action", "formaction", "ping"],
  ALLOW_DATA_ATTR: false,
};
function markdown(text) {
  const div = h("div", { class: "md" });
  if (text !== undefined && text !== null && typeof text !== "string") {
    div.append(pre(json(text), "json"));
    return div;
  }
  text = String(text || "");
  if (text.length > 300000) {
    div.append(pre(text));
    return div;
  }
  let html;
  try {
    html = marked.parse(text, { async: false });
  } catch (e) {
    div.append(pre(text));
    return div;
  }
  div.innerHTML = DOMPurify.sanitize(html, PURIFY);
  return div;
}

// --------------------------------------------------------------------------------------- state

const state = {
  view: "conversations",
  model: "",
  session: SESSIONS.length ? SESSIONS[0].id : null,
};

function sessionVisible(s) {
  return !state.model || (s.totals.models || []).includes(state.model);
}
function callVisible(c) {
  return !state.model || c.model === state.model;
}

// ----------------------------------------------------------------------------------------- app

const app = document.getElementById("app");
let mainEl;

function render() {
  app.textContent = "";
  app.append(header());
  mainEl = h("main", { class: "view-" + state.view });
  app.append(mainEl);
  if (state.view === "conversations") renderConversations(mainEl);
  else if (state.view === "raw") renderCallList(mainEl, "raw");
  else renderCallList(mainEl, "json");
}

function header() {
  const tot = { in: 0, out: 0, cr: 0, cc: 0 };
  for (const c of CALLS) {
    tot.in += c.in; tot.out += c.out; tot.cr += c.cr; tot.cc += c.cc;
  }
  const tab = (id, label, count) =>
    h("button", {
      type: "button", class: "tab" + (state.view === id ? " active" : ""), "data-view": id,
      onclick: () => { state.view = id; render(); },
    }, label, h("span", { class: "count" }, String(count)));
  const bar = h("nav", { class: "tabs" },
    tab("conversations", "Conversations", SESSIONS.filter(sessionVisible).length),
    tab("raw", "Raw calls", CALLS.filter(callVisible).length),
    tab("json", "JSON debug", CALLS.filter((c) => callVisible(c) && c.kind === "messages").length));
  let filter = null;
  if (SUMMARY.models.length > 1) {
    const sel = h("select", { class: "model-filter", "aria-label": "Model filter" },
      h("option", { value: "" }, "All models"),
      SUMMARY.models.map((m) => h("option", { value: m }, m)));
    sel.value = state.model;
    sel.addEventListener("change", () => {
      state.model = sel.value;
      const vis = SESSIONS.filter(sessionVisible);
      if (!vis.some((s) => s.id === state.session)) state.session = vis.length ? vis[0].id : null;
      render();
    });
    filter = h("label", { class: "filter" }, "Model ", sel);
  }
  const src = SUMMARY.source ? SUMMARY.source.split("/").pop() : "log";
  return h("header", { class: "top" },
    h("div", { class: "brand" }, h("strong", null, "tracer"), " ", h("span", { class: "src", title: SUMMARY.source }, src)),
    h("div", { class: "totals" },
      `${fmtInt(CALLS.length)} calls · in ${fmtTok(tot.in)} · out ${fmtTok(tot.out)} · cache read ${fmtTok(tot.cr)} · cache write ${fmtTok(tot.cc)} · `,
      h("span", { class: "cost-total", title: priceNote() }, "cost " + fmtCost(CALLS.map((c) => c.i))),
      h("span", { class: "price-date", title: priceNote() }, ` (prices as of ${PRICES.date || "?"})`)),
    searchBox(),
    bar, filter, processPanel(),
    SUMMARY.skipped ? h("div", { class: "warn skipped" }, `${SUMMARY.skipped} log line(s) skipped: ${SUMMARY.warnings.slice(0, 3).join("; ")}` +
      (SUMMARY.skipped > 3 ? ` (and ${SUMMARY.skipped - 3} more)` : "")) : null);
}

// ------------------------------------------------------------------------------ conversations

function renderConversations(root) {
  const list = h("aside", { class: "sessions" });
  const detail = h("section", { class: "session" });
  root.append(list, detail);
  const vis = SESSIONS.filter(sessionVisible);
  if (!vis.length) {
    detail.append(h("p", { class: "empty" }, "No conversations in this log." +
      (CALLS.length ? " See Raw calls." : "")));
    return;
  }
  for (const s of vis) {
    const t = s.totals;
    const nsub = s.threads.filter((id) => THREADS[id].kind === "subagent").length;
    const item = h("button", {
      type: "button", class: "session-item" + (s.id === state.session ? " active" : ""), "data-session": s.id,
      onclick: () => { state.session = s.id; history.replaceState(null, "", "#session=" + s.id); render(); },
    },
      h("div", { class: "s-title" }, s.title || "(no prompt)"),
      h("div", { class: "s-meta" },
        `${fmtTime(t.start)} · ${t.calls} call${t.calls === 1 ? "" : "s"}` + (nsub ? ` · ${nsub} subagent${nsub === 1 ? "" : "s"}` : "")),
      h("div", { class: "s-meta" }, `in ${fmtTok(t.in)} · out ${fmtTok(t.out)} · cache ${fmtTok(t.cr)} · ${fmtMs(t.wall_ms)} · ${fmtCost(s.calls)}`),
      h("div", { class: "s-meta" }, (t.models || []).map(shortModel).join(", ")));
    list.append(item);
  }
  const s = SESSIONS[state.session];
  if (s) renderSession(detail, s);
}

function statBox(label, value, title) {
  return h("div", { class: "stat", title: title || null }, h("div", { class: "v" }, value), h("div", { class: "k" }, label));
}

function callsTable(ids) {
  const rows = ids.map((i) => {
    const c = CALLS[i];
    return h("tr", { class: c.err || (c.status >= 400) ? "bad" : "" },
      h("td", null, h("a", { href: "#", onclick: (e) => { e.preventDefault(); showCall(i); } }, "#" + i)),
      h("td", null, fmtTime(c.t).slice(11, 19)),
      h("td", null, shortModel(c.model) || c.path),
      h("td", null, c.status === null ? "–" : String(c.status)),
      h("td", { class: "num" }, fmtInt(c.in)), h("td", { class: "num" }, fmtInt(c.out)),
      h("td", { class: "num" }, fmtInt(c.cr)), h("td", { class: "num" }, fmtInt(c.cc)),
      h("td", { class: "num" }, fmtMs(c.ttfb)), h("td", { class: "num" }, fmtMs(c.ttft)),
      h("td", { class: "num" }, fmtMs(c.dur)), h("td", { class: "num" }, fmtTps(c.tps)),
      h("td", { class: "num cost" }, c.kind === "messages" ? fmtUsd(c.cost) : ""),
      h("td", { class: "changes" }, c.kind === "messages" ? changesBrief(i) : ""),
      h("td", null, c.stop || (c.err ? String(c.err).slice(0, 60) : "")));
  });
  return h("table", { class: "calls" },
    h("thead", null, h("tr", null, ["call", "time", "model", "status", "input", "output", "cache read",
      "cache write", "TTFB", "TTFT", "duration", "tok/s", "cost", "what changed", "stop"].map((x) => h("th", null, x)))),
    h("tbody", null, rows));
}

function renderSession(root, s) {
  const t = s.totals;
  root.append(h("h2", { class: "s-head" }, s.title || "(no prompt)"));
  root.append(h("div", { class: "stats" },
    statBox("calls", fmtInt(t.calls)), statBox("input", fmtTok(t.in), fmtInt(t.in) + " input tokens"),
    statBox("output", fmtTok(t.out), fmtInt(t.out) + " output tokens"),
    statBox("cache read", fmtTok(t.cr), fmtInt(t.cr)), statBox("cache write", fmtTok(t.cc), fmtInt(t.cc)),
    statBox("wall time", fmtMs(t.wall_ms), "first request to last response"),
    statBox("API time", fmtMs(t.api_ms), "sum of call durations"),
    statBox("cost", fmtCost(s.calls), priceNote()),
    statBox("started", fmtTime(t.start)),
    t.errors ? statBox("errors", String(t.errors)) : null));
  root.append(lazyDetails(`Calls (${s.calls.length})`, (b) => b.append(callsTable(s.calls)), { class: "calls-box" }));

  const conv = h("div", { class: "conversation" });
  root.append(conv);
  // The root thread and the threads that continue it after compaction, in order.
  const chain = [];
  for (let id = s.root; id !== null && id !== undefined && !chain.includes(id); id = THREADS[id].continued_by) chain.push(id);
  withCalls(chain.map((id) => THREADS[id].final), () => {
    chain.forEach((id, k) => {
      if (k > 0) conv.append(h("div", { class: "compacted" }, "Conversation compacted — continued below from a summary"));
      conv.append(renderThread(id, { top: k === 0 }));
      // Lets tests and benchmarks read when the first message was painted (Element Timing API).
      const first = conv.querySelector(".msg .role");
      if (first && !document.querySelector("[elementtiming]")) first.setAttribute("elementtiming", "first-message");
    });
    const aux = s.threads.filter((id) => THREADS[id].kind === "aux");
    if (aux.length) {
      conv.append(lazyDetails(`Side calls (${aux.length}): warm-ups, titles, topics and other short requests`, (b) => {
        for (const id of aux) b.append(renderThread(id, { compact: true }));
      }, { class: "aux" }));
    }
  });
}

function threadMessages(th) {
  const rec = callRecord(th.final);
  if (!rec) return { body: null, msgs: [] };
  const body = rec.request.body || {};
  const msgs = (body.messages || []).slice();
  return { body, msgs };
}

function systemText(sys) {
  if (typeof sys === "string") return sys;
  if (Array.isArray(sys)) return sys.map((b) => (b && typeof b.text === "string" ? b.text : json(b))).join("\n\n");
  return sys ? json(sys) : "";
}

function renderThread(tid, opts = {}) {
  const th = THREADS[tid];
  const wrap = h("div", { class: "thread kind-" + th.kind, "data-thread": tid });
  const { body, msgs } = threadMessages(th);
  if (!body) {
    wrap.append(h("p", { class: "empty" }, "Call data missing."));
    return wrap;
  }
  const producers = new Map(th.producers.map(([n, ci]) => [n, ci]));
  const fin = CALLS[th.final];
  const resp = responseMessage(th.final);
  const all = msgs.map((m) => ({ m }));
  if (resp) all.push({ m: { role: "assistant", content: resp.content }, final: true });

  const head = h("div", { class: "thread-head" });
  if (opts.compact) put(head, h("div", { class: "aux-title" }, `${shortModel(fin.model)} · ${th.calls.length} call(s) · ${th.title || ""}`));
  if (body.system) {
    const text = systemText(body.system);
    put(head, lazyDetails(`System prompt (${fmtInt(text.length)} chars)`, (b) => b.append(pre(text)), { class: "system" }));
  }
  if (Array.isArray(body.tools) && body.tools.length) {
    put(head, lazyDetails(`Tools (${body.tools.length}): ${body.tools.map((t) => t && t.name).slice(0, 12).join(", ")}${body.tools.length > 12 ? ", …" : ""}`, (b) => {
      for (const t of body.tools) {
        b.append(lazyDetails(String((t && t.name) || "?"), (bb) => {
          if (t && t.description) bb.append(markdown(t.description));
          bb.append(pre(json(t && (t.input_schema || t)), "json"));
        }, { class: "tool-def" }));
      }
    }, { class: "tools" }));
  }
  wrap.append(head);

  // Pair each tool call with its result (which arrives in a later user message).
  const results = new Map();
  for (const { m } of all) {
    if (m && m.role === "user" && Array.isArray(m.content)) {
      for (const b of m.content) if (b && b.type === "tool_result") results.set(b.tool_use_id, b);
    }
  }
  const paired = new Set();
  for (const { m } of all) {
    if (m && m.role === "assistant" && Array.isArray(m.content)) {
      for (const b of m.content) if (b && b.type === "tool_use" && results.has(b.id)) paired.add(b.id);
    }
  }
  const children = new Map(th.children.map(([tool, child]) => [tool, child]));
  const ctx = { results, paired, children };

  const list = h("div", { class: "messages" });
  wrap.append(list);
  const BATCH = 30;
  let k = 0;
  const step = () => {
    const end = Math.min(all.length, k + BATCH);
    for (; k < end; k++) {
      const { m, final } = all[k];
      const prod = producers.get(k);
      const node = renderMessage(m, ctx, prod !== undefined ? prod : (final ? th.final : null));
      if (node.nodeType === 1) node.dataset.k = String(k);
      list.append(node);
    }
    if (k < all.length) setTimeout(step, 0);
  };
  step();
  wrap.rendered = () => k >= all.length;
  if (!resp && fin.err) list.append(h("div", { class: "msg error" }, h("div", { class: "role" }, "error"), String(fin.err)));
  return wrap;
}

function callBadge(ci) {
  const c = CALLS[ci];
  const parts = [shortModel(c.model), `in ${fmtTok(c.in)}`, `out ${fmtTok(c.out)}`];
  if (c.cr) parts.push(`cache read ${fmtTok(c.cr)}`);
  if (c.cc) parts.push(`cache write ${fmtTok(c.cc)}`);
  if (c.ttft !== null) parts.push(`TTFT ${fmtMs(c.ttft)}`);
  else if (c.ttfb !== null) parts.push(`TTFB ${fmtMs(c.ttfb)}`);
  parts.push(fmtMs(c.dur));
  if (c.tps) parts.push(`${fmtTps(c.tps)} tok/s`);
  if (c.kind === "messages") parts.push(fmtUsd(c.cost));
  return h("a", { class: "call-badge", href: "#", title: "Show this call in Raw calls",
    onclick: (e) => { e.preventDefault(); showCall(ci); } }, `#${ci} · ` + parts.join(" · "));
}

function renderMessage(m, ctx, producer) {
  if (!m || typeof m !== "object") return h("div", { class: "msg" }, pre(json(m)));
  const role = String(m.role || "?");
  if (role === "system") {
    // Claude Code sends some context (agent types, skills) as system messages: long, rarely read.
    const text = typeof m.content === "string" ? m.content : systemText(m.content);
    return h("div", { class: "msg role-other" },
      lazyDetails(`System message (${fmtInt(text.length)} chars)`, (x) => x.append(markdown(text)), { class: "system-msg" }));
  }
  const el = h("div", { class: "msg role-" + (role === "user" || role === "assistant" ? role : "other") });
  const head = h("div", { class: "role" }, role === "assistant" ? "Assistant" : role === "user" ? "User" : role);
  if (producer !== null && producer !== undefined) put(head, " ", callBadge(producer));
  el.append(head);
  let content = m.content;
  if (typeof content === "string") content = [{ type: "text", text: content }];
  if (!Array.isArray(content)) {
    el.append(pre(json(content)));
    return el;
  }
  let shown = 0;
  for (const b of content) {
    const node = renderBlock(b, role, ctx);
    if (node) { el.append(node); shown++; }
  }
  if (!shown) return document.createComment("tool results only");
  return el;
}

function renderBlock(b, role, ctx) {
  if (!b || typeof b !== "object") return pre(json(b));
  switch (b.type) {
    case "text": {
      const t = String(b.text || "");
      if (/^\s*<system-reminder>/.test(t)) {
        return lazyDetails("system reminder", (x) => x.append(pre(t)), { class: "reminder" });
      }
      if (/^\s*<command-name>|^\s*<local-command-stdout>/.test(t)) return pre(t, "cmd-meta");
      return h("div", { class: "block text" }, markdown(t));
    }
    case "thinking":
      return lazyDetails(h("span", null, "Thinking", b.signature ? h("span", { class: "sig", title: b.signature }, " · signed") : null),
        (x) => x.append(markdown(b.thinking)), { class: "thinking", open: true });
    case "redacted_thinking":
      return h("div", { class: "thinking redacted" }, "Redacted thinking");
    case "tool_use":
    case "server_tool_use":
    case "mcp_tool_use":
      return renderToolUse(b, ctx);
    case "tool_result":
      if (ctx.paired.has(b.tool_use_id)) return null;
      return h("div", { class: "tool orphan" }, h("div", { class: "tool-head" }, "Tool result ", h("code", null, String(b.tool_use_id || ""))), renderResult(b));
    case "image":
      return renderImage(b);
    case "document":
      return lazyDetails("Document", (x) => x.append(pre(json(b))), { class: "doc" });
    default:
      return lazyDetails(String(b.type || "block"), (x) => x.append(pre(json(b), "json")), { class: "unknown", open: true });
  }
}

function renderImage(b) {
  const src = b.source || {};
  if (src.type === "base64" && /^image\/(png|jpeg|gif|webp)$/.test(src.media_type) && typeof src.data === "string" && /^[A-Za-z0-9+/=\s]*$/.test(src.data)) {
    const img = h("img", { class: "img", alt: "image from the conversation" });
    img.src = `data:${src.media_type};base64,${src.data.replace(/\s/g, "")}`;
    return img;
  }
  return h("div", { class: "block" }, `[image: ${src.type || "?"} ${src.media_type || src.url || ""}]`);
}

function resultText(r) {
  if (!r) return "";
  const c = r.content;
  if (typeof c === "string") return c;
  if (Array.isArray(c)) return c.filter((x) => x && x.type === "text").map((x) => x.text).join("\n");
  return c === undefined ? "" : json(c);
}

function renderResult(r, kind) {
  if (!r) return h("div", { class: "result pending" }, "(no result in this log)");
  const wrap = h("div", { class: "result" + (r.is_error ? " is-error" : "") });
  if (r.is_error) wrap.append(h("div", { class: "label" }, "error"));
  const text = resultText(r);
  if (text) wrap.append(kind === "md" ? markdown(text) : pre(text, "output"));
  if (Array.isArray(r.content)) for (const x of r.content) if (x && x.type === "image") wrap.append(renderImage(x));
  if (!text && !(Array.isArray(r.content) && r.content.length)) wrap.append(h("div", { class: "label" }, "(empty)"));
  return wrap;
}

function kv(pairs) {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "" || v === false) continue;
    dl.append(h("dt", null, k), h("dd", null, typeof v === "string" ? v : json(v)));
  }
  return dl;
}

function diffView(oldText, newText) {
  // Myers' diff is O(N*D): bounded, so a huge edit cannot freeze the page (shown whole instead).
  const a = String(oldText || ""), b = String(newText || "");
  const parts = a.length + b.length < 2e6 ? diffLines(a, b, { maxEditLength: 5000 }) : undefined;
  if (parts) return diffFromParts(parts);
  return h("div", null, h("p", { class: "hint" }, "Too large or too different to show as a diff:"),
    h("div", { class: "diff" }, h("div", { class: "del" }, pre(a)), h("div", { class: "add" }, pre(b))));
}

const STATUS_ICON = { completed: "☑", in_progress: "◐", pending: "☐" };

function renderToolUse(b, ctx) {
  const input = b.input && typeof b.input === "object" ? b.input : {};
  const name = String(b.name || "tool");
  const r = ctx.results.get(b.id);
  const head = h("div", { class: "tool-head" }, h("span", { class: "tool-name" }, name));
  const el = h("div", { class: "tool tool-" + name.replace(/[^A-Za-z0-9_-]/g, "_"), "data-tool-id": String(b.id || "") }, head);
  const path = input.file_path || input.notebook_path || input.path;
  switch (b.input && typeof b.input === "object" && !Array.isArray(b.input) ? name : "") {
    case "Bash":
      if (input.description) put(head, h("span", { class: "tool-desc" }, String(input.description)));
      el.append(h("pre", { class: "pre cmd" }, "$ " + String(input.command || "")));
      el.append(renderResult(r));
      break;
    case "Read":
      put(head, h("code", { class: "path" }, String(path || "")),
        input.offset || input.limit ? h("span", { class: "tool-desc" }, `lines ${input.offset || 1}+${input.limit || ""}`) : null);
      el.append(r ? lazyDetails(`contents (${fmtInt(resultText(r).split("\n").length)} lines)`, (x) => x.append(renderResult(r)), { class: "file", open: resultText(r).length < 4000 }) : renderResult(r));
      break;
    case "Write":
      put(head, h("code", { class: "path" }, String(path || "")));
      el.append(pre(input.content, "file"));
      el.append(renderResult(r));
      break;
    case "Edit":
      put(head, h("code", { class: "path" }, String(path || "")), input.replace_all ? h("span", { class: "tool-desc" }, "replace all") : null);
      el.append(diffView(input.old_string, input.new_string));
      el.append(renderResult(r));
      break;
    case "MultiEdit":
      put(head, h("code", { class: "path" }, String(path || "")), h("span", { class: "tool-desc" }, `${(input.edits || []).length} edits`));
      for (const e of Array.isArray(input.edits) ? input.edits : []) el.append(diffView(e && e.old_string, e && e.new_string));
      el.append(renderResult(r));
      break;
    case "TodoWrite": {
      const ul = h("ul", { class: "todos" });
      for (const t of Array.isArray(input.todos) ? input.todos : []) {
        const st = String((t && t.status) || "pending");
        ul.append(h("li", { class: "todo " + st.replace(/[^a-z_]/g, "") },
          h("span", { class: "box" }, STATUS_ICON[st] || "☐"), " ", String((t && (t.content || t.activeForm)) || "")));
      }
      el.append(ul);
      if (r && r.is_error) el.append(renderResult(r));
      break;
    }
    case "Grep":
      put(head, h("code", { class: "path" }, String(input.pattern || "")));
      el.append(kv([["path", input.path], ["glob", input.glob], ["type", input.type], ["mode", input.output_mode],
        ["case-insensitive", input["-i"] ? "yes" : ""], ["multiline", input.multiline ? "yes" : ""]]));
      el.append(renderResult(r));
      break;
    case "Glob":
      put(head, h("code", { class: "path" }, String(input.pattern || "")));
      el.append(kv([["path", input.path]]));
      el.append(renderResult(r));
      break;
    case "LS":
      put(head, h("code", { class: "path" }, String(path || "")));
      el.append(renderResult(r));
      break;
    case "WebFetch":
      put(head, h("code", { class: "path" }, String(input.url || "")));
      el.append(kv([["prompt", input.prompt]]));
      el.append(renderResult(r, "md"));
      break;
    case "WebSearch":
      put(head, h("code", { class: "path" }, String(input.query || "")));
      el.append(kv([["allowed domains", input.allowed_domains], ["blocked domains", input.blocked_domains]]));
      el.append(renderResult(r, "md"));
      break;
    case "Task":
    case "Agent": {
      put(head, h("span", { class: "tool-desc" }, [input.subagent_type, input.description].filter(Boolean).join(": ")));
      el.append(lazyDetails("prompt", (x) => x.append(markdown(input.prompt)), { class: "prompt" }));
      const child = ctx.children.get(b.id);
      if (child !== undefined) {
        const ct = THREADS[child];
        el.append(lazyDetails(`Subagent conversation (${ct.calls.length} call${ct.calls.length === 1 ? "" : "s"}, ${subagentCost(child)})`, (x) => {
          withCalls([ct.final], () => x.append(renderThread(child)));
        }, { class: "subagent" }));
      }
      el.append(renderResult(r, "md"));
      break;
    }
    default:
      el.append(pre(typeof b.input === "string" ? b.input : json(b.input), "json"));
      el.append(renderResult(r));
  }
  return el;
}

// ------------------------------------------------------------------------------ raw / json views

function showCall(i, mode = "raw") {
  state.view = mode;
  render();
  const el = document.getElementById((mode === "raw" ? "call-" : "json-") + i);
  if (el) {
    el.open = true;
    if (el._build) el._build();
    el.scrollIntoView({ block: "start" });
  }
  return el;
}

function headersTable(hd) {
  if (!hd || typeof hd !== "object") return h("div", { class: "empty" }, "(none)");
  return h("table", { class: "headers" }, h("tbody", null,
    Object.entries(hd).map(([k, v]) => h("tr", null, h("th", null, k), h("td", null, typeof v === "string" ? v : json(v))))));
}

function renderRaw(body, i) {
  const rec = callRecord(i);
  if (!rec) {
    body.append(h("p", null, "Call data missing."));
    return;
  }
  const req = rec.request || {};
  const res = rec.response;
  body.append(h("div", { class: "reqline" }, h("code", null, `${req.method || ""} ${req.url || ""}`)));
  const c = CALLS[i];
  body.append(kv([["model", c.model], ["status", c.status === null ? "no response" : String(c.status)],
    ["started", fmtTime(c.t)], ["tokens", c.kind === "messages" ? `input ${fmtInt(c.in)} · output ${fmtInt(c.out)} · cache read ${fmtInt(c.cr)} · cache write ${fmtInt(c.cc)}` : ""],
    ["timing", `TTFB ${fmtMs(c.ttfb)} · TTFT ${fmtMs(c.ttft)} · duration ${fmtMs(c.dur)}` + (c.tps ? ` · ${fmtTps(c.tps)} output tok/s` : "")],
    ["cost", c.kind === "messages" ? fmtUsd(c.cost) + (c.pm ? ` (${(PRICES.models[c.pm] || {}).name || c.pm}, prices as of ${PRICES.date})` : " (model not in the price table)") : ""],
    ["stop reason", c.stop], ["conversation", c.session !== null ? `session ${c.session + 1}, thread ${c.thread}` : ""]]));
  if (rec.truncated && rec.truncated.length) {
    body.append(h("div", { class: "warn cut" }, `Cut in this page: ${rec.truncated.map((t) => t.path || "body").join(", ")} — the full text is in the log, line ${rec.line}.`));
  }
  if (c.kind === "messages" && c.thread !== null) body.append(lazyDetails("What changed since the previous call of this conversation", (x) => x.append(changesView(i)), { class: "changes-box", open: true }));
  if (rec.note) body.append(h("div", { class: "warn" }, String(rec.note)));
  body.append(h("h4", null, "Request headers"), headersTable(req.headers));
  body.append(lazyDetails("Request body", (x) => x.append(pre(typeof req.body === "string" ? req.body : json(req.body), "json")), { class: "body", open: true }));
  if (res) {
    body.append(h("h4", null, `Response ${res.status_code ?? ""}`), headersTable(res.headers));
    if (res.body_raw !== undefined && res.body_raw !== null) {
      body.append(lazyDetails(`Response body (raw, ${fmtInt(String(res.body_raw).length)} chars)`, (x) => x.append(pre(res.body_raw, "sse")), { class: "body", open: true }));
    }
    if (res.body !== undefined && res.body !== null) {
      body.append(lazyDetails("Response body", (x) => x.append(pre(typeof res.body === "string" ? res.body : json(res.body), "json")), { class: "body", open: true }));
    }
  } else {
    body.append(h("div", { class: "warn" }, "No response."));
  }
  if (rec.tracer) body.append(lazyDetails("Capture details (tracer)", (x) => x.append(pre(json(rec.tracer), "json")), { class: "body" }));
}

function renderJson(body, i) {
  const rec = callRecord(i);
  const msg = responseMessage(i);
  if (!rec) return;
  const ctype = String(((rec.response && rec.response.headers) || {})["content-type"] || "");
  if (rec.rebuilt) body.append(h("p", { class: "hint" }, /eventstream/i.test(ctype)
    ? "Messages API response rebuilt from the Bedrock event stream (binary AWS event-stream frames; logged base64)."
    : "Messages API response rebuilt from the SSE stream."));
  if (rec.rebuild_errors && rec.rebuild_errors.length) body.append(h("div", { class: "warn" }, rec.rebuild_errors.join("; ")));
  body.append(pre(msg ? json(msg) : json(rec.response && (rec.response.body ?? rec.response.body_raw)), "json"));
}

function renderCallList(root, mode) {
  const box = h("section", { class: "call-list" });
  root.append(box);
  const vis = CALLS.filter((c) => callVisible(c) && (mode === "raw" || c.kind === "messages"));
  if (!vis.length) box.append(h("p", { class: "empty" }, "No calls."));
  const rowFor = (c) => {
    const s = h("span", { class: "row" },
      h("span", { class: "idx" }, "#" + c.i),
      h("span", { class: "time" }, fmtTime(c.t).slice(11, 19)),
      h("span", { class: "method" }, c.method),
      h("span", { class: "status s" + String(c.status || 0)[0] }, c.status === null ? "—" : String(c.status)),
      h("span", { class: "path" }, c.host + c.path),
      c.model ? h("span", { class: "model" }, shortModel(c.model)) : null,
      c.kind === "messages" ? h("span", { class: "tok" }, `in ${fmtTok(c.in)} · out ${fmtTok(c.out)}` + (c.cr ? ` · cr ${fmtTok(c.cr)}` : "") + (c.cc ? ` · cw ${fmtTok(c.cc)}` : "")) : null,
      h("span", { class: "dur" }, fmtMs(c.dur)),
      c.err ? h("span", { class: "err" }, String(c.err).slice(0, 80)) : null);
    const d = lazyDetails(s, (b) => withCalls([c.i], () => (mode === "raw" ? renderRaw : renderJson)(b, c.i)), { class: "call" });
    d.id = (mode === "raw" ? "call-" : "json-") + c.i;
    return d;
  };
  // Rows are cheap (no bodies are touched until a row is opened).
  const frag = document.createDocumentFragment();
  for (const c of vis) frag.append(rowFor(c));
  box.append(frag);
}

function fromHash() {
  const m = /^#(session|call)=(\d+)$/.exec(location.hash || "");
  if (!m) return false;
  const n = Number(m[2]);
  if (m[1] === "session" && SESSIONS[n]) {
    state.view = "conversations";
    state.session = n;
    render();
    return true;
  }
  if (m[1] === "call" && CALLS[n]) {
    withCalls([n], () => showCall(n));
    return true;
  }
  return false;
}

// ------------------------------------------------------------------------------------ cost / changes

function subagentCost(tid) {
  // the subagent's own calls and those of its subagents
  const ids = [];
  const stack = [tid];
  const seen = new Set();
  while (stack.length) {
    const t = stack.pop();
    if (seen.has(t)) continue;
    seen.add(t);
    ids.push(...THREADS[t].calls);
    for (const [, child] of THREADS[t].children) stack.push(child);
  }
  return fmtCost(ids);
}

// The previous call of the same conversation (thread calls are in time order).
const BILLING = "x-anthropic-billing-header:";
let callPos = null;
function previousCall(i) {
  const c = CALLS[i];
  if (c.thread === null || c.thread === undefined) return null;
  if (!callPos) {   // position of every call in its thread, once (no indexOf per call)
    callPos = new Map();
    for (const th of THREADS) th.calls.forEach((ci, k) => callPos.set(ci, k));
  }
  const k = callPos.get(i);
  return k > 0 ? THREADS[c.thread].calls[k - 1] : null;
}

function toolsByName(body) {
  const m = new Map();
  for (const t of Array.isArray(body.tools) ? body.tools : []) if (t && typeof t === "object") m.set(String(t.name), JSON.stringify(t));
  return m;
}

// What a call sent that the previous call of its conversation did not: messages are compared by their
// (deduplicated) ids, so this is linear in the number of messages.
function callChanges(i) {
  const p = previousCall(i);
  const cur = callRecord(i);
  if (!cur) return null;
  const body = cur.request.body || {};
  const ids = cur.msgIds || [];
  const out = { prev: p, added: [], removed: 0, systemChanged: false, toolsAdded: [], toolsRemoved: [], toolsChanged: [], oldSystem: "", newSystem: systemText(body.system) };
  if (p === null) { out.added = ids.map((id, k) => k); return out; }
  const prev = callRecord(p);
  if (!prev) return null;
  const pbody = prev.request.body || {};
  const pids = prev.msgIds || [];
  let k = 0;
  while (k < ids.length && k < pids.length && ids[k] === pids[k]) k++;
  out.removed = pids.length - k;
  for (let j = k; j < ids.length; j++) out.added.push(j);
  out.oldSystem = systemText(pbody.system);
  // Claude Code's per-request billing line (a checksum) changes every call: not a change of prompt
  const sys = (x) => JSON.stringify(x === undefined ? null : Array.isArray(x) ? x.filter((b) => !(b && typeof b.text === "string" && b.text.startsWith(BILLING))) : x);
  out.systemChanged = sys(pbody.system) !== sys(body.system);
  out.billingOnly = !out.systemChanged && JSON.stringify(pbody.system) !== JSON.stringify(body.system);
  const a = toolsByName(pbody), b = toolsByName(body);
  for (const [n, d] of b) { if (!a.has(n)) out.toolsAdded.push(n); else if (a.get(n) !== d) out.toolsChanged.push(n); }
  for (const n of a.keys()) if (!b.has(n)) out.toolsRemoved.push(n);
  return out;
}

function changesBrief(i) {
  const ch = callChanges(i);
  if (!ch) return "";
  if (ch.prev === null) return `first call (${ch.added.length} msg${ch.added.length === 1 ? "" : "s"})`;
  const parts = [`+${ch.added.length} msg${ch.added.length === 1 ? "" : "s"}`];
  if (ch.removed) parts.push(`${ch.removed} replaced`);
  if (ch.systemChanged) parts.push("system changed");
  if (ch.toolsAdded.length || ch.toolsRemoved.length || ch.toolsChanged.length) parts.push("tools changed");
  return parts.join(" · ");
}

function messagePreview(m) {
  if (!m || typeof m !== "object") return json(m).slice(0, 200);
  const c = typeof m.content === "string" ? [{ type: "text", text: m.content }] : Array.isArray(m.content) ? m.content : [];
  const bits = c.map((b) => {
    if (!b || typeof b !== "object") return "";
    if (b.type === "text") return String(b.text || "");
    if (b.type === "tool_use") return `[${b.name} ${JSON.stringify(b.input || {}).slice(0, 120)}]`;
    if (b.type === "tool_result") return `[result ${resultText(b).slice(0, 160)}]`;
    if (b.type === "thinking") return "[thinking]";
    return `[${b.type}]`;
  });
  const t = bits.join(" ").replace(/\s+/g, " ").trim();
  return t.length > 300 ? t.slice(0, 300) + "…" : t;
}

function changesView(i) {
  const box = h("div", { class: "changes-view" });
  const ch = callChanges(i);
  if (!ch) { box.append(h("p", { class: "empty" }, "Call data missing.")); return box; }
  const rec = callRecord(i);
  const msgs = (rec.request.body && rec.request.body.messages) || [];
  if (ch.prev === null) box.append(h("p", { class: "hint" }, "First call of this conversation: everything below is new."));
  else box.append(h("p", { class: "hint" }, "Compared with ", h("a", { href: "#", onclick: (e) => { e.preventDefault(); showCall(ch.prev); } }, `call #${ch.prev}`),
    `: ${ch.added.length} message${ch.added.length === 1 ? "" : "s"} added` + (ch.removed ? `, ${ch.removed} earlier message(s) replaced (history rewritten)` : "") +
    `; system prompt ${ch.systemChanged ? "changed" : ch.billingOnly ? "unchanged (only its per-request billing line differs)" : "unchanged"}; tools ${ch.toolsAdded.length || ch.toolsRemoved.length || ch.toolsChanged.length ? "changed" : "unchanged"}.`));
  if (ch.added.length) {
    const ul = h("ol", { class: "added-msgs", start: String(ch.added[0] + 1) });
    for (const k of ch.added) ul.append(h("li", { class: "added-msg role-" + String((msgs[k] && msgs[k].role) || "?") }, h("b", null, String((msgs[k] && msgs[k].role) || "?") + ": "), messagePreview(msgs[k])));
    box.append(h("h4", null, "Messages added"), ul);
  }
  if (ch.prev !== null && ch.systemChanged) {
    box.append(h("h4", null, "System prompt changed"));
    const parts = diffLines(ch.oldSystem, ch.newSystem, { maxEditLength: 5000 });
    if (parts) box.append(diffFromParts(parts));
    else box.append(h("p", { class: "hint" }, `Too different to show as a diff (${fmtInt(ch.oldSystem.length)} → ${fmtInt(ch.newSystem.length)} chars).`));
  }
  if (ch.toolsAdded.length) box.append(h("div", { class: "tools-added" }, "Tools added: " + ch.toolsAdded.join(", ")));
  if (ch.toolsRemoved.length) box.append(h("div", { class: "tools-removed" }, "Tools removed: " + ch.toolsRemoved.join(", ")));
  if (ch.toolsChanged.length) box.append(h("div", { class: "tools-changed" }, "Tool definitions changed: " + ch.toolsChanged.join(", ")));
  return box;
}

function diffFromParts(parts) {
  const box = h("pre", { class: "pre diff" });
  for (const p of parts) {
    const cls = p.added ? "add" : p.removed ? "del" : "ctx";
    const sign = p.added ? "+" : p.removed ? "-" : " ";
    let lines = p.value.replace(/\n$/, "").split("\n");
    if (cls === "ctx" && lines.length > 8) lines = [...lines.slice(0, 3), `… ${lines.length - 6} unchanged lines …`, ...lines.slice(-3)];
    for (const l of lines) box.append(h("span", { class: "dl " + cls }, sign + " " + l + "\n"));
  }
  return box;
}

// ------------------------------------------------------------------------------------------ search
// Full-text search over every Messages call: prompts and other messages, answers, tool inputs and
// outputs, thinking, system prompts. The index is built on first use, in slices of a few ms between
// frames (the page's CSP allows no worker; the first paint does not pay for it), from the embedded
// blobs, parsed once and not kept: only the texts stay. Each distinct message is indexed once.

const search = { entries: null, building: false, progress: 0, msgLoc: new Map(), q: "", results: [], panel: null, waiters: [] };

function blockTexts(m) {
  const out = [];
  if (!m || typeof m !== "object") return out;
  const c = typeof m.content === "string" ? [{ type: "text", text: m.content }] : Array.isArray(m.content) ? m.content : [];
  c.forEach((b, k) => {
    if (!b || typeof b !== "object") return;
    let t = "", tool = null, what = b.type;
    if (b.type === "text") t = String(b.text || "");
    else if (b.type === "thinking") t = String(b.thinking || "");
    else if (b.type === "tool_use" || b.type === "server_tool_use" || b.type === "mcp_tool_use") { t = String(b.name || "") + " " + (typeof b.input === "string" ? b.input : JSON.stringify(b.input)); tool = b.id; what = "tool input"; }
    else if (b.type === "tool_result") { t = resultText(b); tool = b.tool_use_id; what = "tool output"; }
    else if (b.type === "document" || b.type === "image") return;
    else t = JSON.stringify(b);
    if (t) out.push({ t, b: k, tool, what });
  });
  return out;
}

function rawBlob(id) {
  if (blobCache.has(id)) return blobCache.get(id);
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : undefined;
}

function buildIndex(done) {
  if (search.entries) { done(); return; }
  search.waiters.push(done);
  if (search.building) return;
  search.building = true;
  const entries = [];
  const seenSystem = new Map();
  const msgDone = new Set();
  const order = [];
  for (const th of THREADS) for (const ci of th.calls) order.push(ci);
  let k = 0;
  const step = () => {
    const t0 = performance.now();
    while (k < order.length && performance.now() - t0 < 12) {
      const ci = order[k++];
      const b = rawBlob("c" + ci);
      if (!b || !b.request) continue;
      const body = b.request.body || {};
      const ids = b.msgIds || (Array.isArray(body.messages) ? body.messages : []);
      ids.forEach((id, pos) => {
        if (typeof id !== "number" || search.msgLoc.has(id)) return;
        search.msgLoc.set(id, { call: ci, pos });
        if (msgDone.has(id)) return;
        msgDone.add(id);
        const m = rawBlob("m" + id);
        for (const x of blockTexts(m)) entries.push({ t: x.t, loc: { type: "msg", id, b: x.b, tool: x.tool }, what: (m && m.role ? m.role : "?") + (x.what === "text" ? "" : " · " + x.what) });
      });
      if (body.system !== undefined) {
        const st = systemText(body.system);
        if (st && !seenSystem.has(st)) { seenSystem.set(st, ci); entries.push({ t: st, loc: { type: "system", call: ci }, what: "system prompt" }); }
      }
      const resp = b.rebuilt || (b.response && b.response.body && typeof b.response.body === "object" ? b.response.body : null);
      // an answer that a later call of the conversation sends back as history is indexed there
      const th = CALLS[ci].thread !== null && CALLS[ci].thread !== undefined ? THREADS[CALLS[ci].thread] : null;
      const resent = th && th.final !== ci && CALLS[th.final].nmsg > CALLS[ci].nmsg;
      if (resp && !resent) for (const x of blockTexts({ content: resp.content })) entries.push({ t: x.t, loc: { type: "response", call: ci, b: x.b, tool: x.tool }, what: "answer" + (x.what === "text" ? "" : " · " + x.what) });
    }
    search.progress = order.length ? k / order.length : 1;
    updatePanel();
    if (k < order.length) { setTimeout(step, 0); return; }
    search.entries = entries;
    search.building = false;
    const ws = search.waiters.splice(0);
    for (const w of ws) w();
  };
  setTimeout(step, 0);
}

function escapeRe(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }

const MAX_RESULTS = 500;
function runSearch(q) {
  search.q = q;
  search.results = [];
  if (!q) { updatePanel(); return; }
  buildIndex(() => {
    if (search.q !== q) return;
    const re = new RegExp(escapeRe(q), "i");
    const res = [];
    let total = 0;
    for (const e of search.entries) {
      const m = re.exec(e.t);
      if (!m) continue;
      total++;
      if (res.length < MAX_RESULTS) res.push({ e, at: m.index });
    }
    search.results = res;
    search.total = total;
    updatePanel();
  });
}

function locCall(loc) { return loc.type === "msg" ? (search.msgLoc.get(loc.id) || {}).call : loc.call; }

function resultLabel(r) {
  const ci = locCall(r.e.loc);
  const c = CALLS[ci];
  if (!c) return "";
  const th = c.thread !== null && c.thread !== undefined ? THREADS[c.thread] : null;
  const kind = th ? (th.kind === "aux" ? "side call" : th.kind) : "call";
  return `session ${c.session !== null && c.session !== undefined ? c.session + 1 : "–"} · ${kind} · call #${ci} · ${r.e.what}`;
}

function snippet(text, at, len) {
  const a = Math.max(0, at - 60), b = Math.min(text.length, at + len + 80);
  return h("span", { class: "snip" }, (a ? "…" : "") + text.slice(a, at).replace(/\s+/g, " "), h("mark", null, text.slice(at, at + len)),
    text.slice(at + len, b).replace(/\s+/g, " ") + (b < text.length ? "…" : ""));
}

function searchBox() {
  const input = h("input", { type: "search", class: "search-input", placeholder: "Search all calls…", "aria-label": "Search all calls", value: search.q });
  input.value = search.q;
  let timer = null;
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { openPanel(); runSearch(input.value.trim()); }, 150); });
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") { clearTimeout(timer); openPanel(); runSearch(input.value.trim()); } });
  input.addEventListener("focus", () => buildIndex(() => {}), { once: true });
  return h("div", { class: "search" }, input);
}

function openPanel() {
  if (search.panel) return;
  search.panel = h("aside", { class: "search-results", role: "region", "aria-label": "Search results" });
  document.body.append(search.panel);
}

function truncationNote() {
  const end = rawBlob("tracer-end") || {};
  return end.truncated ? h("p", { class: "hint cut-note" }, `${end.truncated} long bod${end.truncated === 1 ? "y was" : "ies were"} cut in this page (marked “… more, not in this page — see the log, line N”): ` +
    "text past the cut is not searched here; it is in the log." ) : null;
}

function updatePanel() {
  const p = search.panel;
  if (!p) return;
  p.textContent = "";
  const close = h("button", { type: "button", class: "more close", onclick: () => { p.remove(); search.panel = null; } }, "close");
  if (!search.entries) {
    p.append(h("div", { class: "search-head" }, `Indexing… ${Math.round(search.progress * 100)}%`, close));
    return;
  }
  if (!search.q) { p.append(h("div", { class: "search-head" }, "Type to search every call.", close)); return; }
  const n = search.total || 0;
  p.append(h("div", { class: "search-head" }, `${fmtInt(n)} match${n === 1 ? "" : "es"} for “${search.q}”` + (n > search.results.length ? ` (first ${search.results.length} shown)` : ""), close));
  const note = truncationNote();
  if (note) p.append(note);
  const ul = h("ol", { class: "hits" });
  search.results.forEach((r, k) => {
    ul.append(h("li", { class: "hit", "data-hit": k }, h("a", { href: "#", onclick: (e) => { e.preventDefault(); goTo(r); } },
      h("div", { class: "hit-where" }, resultLabel(r)), snippet(r.e.t, r.at, search.q.length))));
  });
  p.append(ul);
}

// Wait for fn() to return an element (the thread renders its messages in batches).
function waitFor(fn, then, tries = 200) {
  const el = fn();
  if (el || tries <= 0) { then(el); return; }
  setTimeout(() => waitFor(fn, then, tries - 1), 15);
}

function openLazy(d) {
  if (!d) return;
  d.open = true;
  if (d._build) d._build();
}

// The element of thread tid, opening what hides it (its parent's subagent box, the side calls box).
function threadElement(tid) {
  const found = document.querySelector(`.conversation [data-thread="${tid}"]`);
  if (found) return found;
  const th = THREADS[tid];
  if (th.kind === "aux") {
    openLazy(document.querySelector(".conversation details.aux"));
    return document.querySelector(`.conversation [data-thread="${tid}"]`);
  }
  if (th.parent) {
    const parent = threadElement(th.parent[0]);
    if (!parent) return null;
    const tool = parent.querySelector(`[data-tool-id="${CSS.escape(String(th.parent[1]))}"]`);
    if (!tool) return null;
    openLazy(tool.querySelector("details.subagent"));
    return document.querySelector(`.conversation [data-thread="${tid}"]`);
  }
  return null;
}

function goTo(r) {
  const loc = r.e.loc;
  const ci = locCall(loc);
  const c = CALLS[ci];
  if (!c) return;
  const th = c.thread !== null ? THREADS[c.thread] : null;
  let pos = null;
  if (loc.type === "msg") {
    const fin = th ? rawBlob("c" + th.final) : null;
    const finIds = fin ? (fin.msgIds || fin.request.body.messages || []) : [];
    const at = search.msgLoc.get(loc.id).pos;
    if (finIds[at] === loc.id) pos = at;
  } else if (loc.type === "response" && th && th.final === ci) {
    const fin = rawBlob("c" + ci);
    pos = (fin.msgIds || fin.request.body.messages || []).length;
  } else if (loc.type === "system") pos = -1;
  if (!th || pos === null || c.session === null) {
    // not shown in a conversation (an earlier version of the history, or a side answer): the call itself
    const el = showCall(ci, loc.type === "response" ? "json" : "raw");
    if (el) setTimeout(() => highlightIn(el.querySelector(".details-body") || el, search.q), 0);
    return;
  }
  state.view = "conversations";
  state.session = c.session;
  render();
  waitFor(() => threadElement(c.thread), (tel) => {
    if (!tel) return;
    if (pos === -1) {
      const d = tel.querySelector(":scope > .thread-head details.system");
      openLazy(d);
      highlightIn(d || tel, search.q);
      return;
    }
    const pick = () => {
      if (loc.tool) {
        const t = tel.querySelector(`:scope > .messages [data-tool-id="${CSS.escape(String(loc.tool))}"]`);
        if (t) return t;
      }
      return tel.querySelector(`:scope > .messages > [data-k="${pos}"]`) || (tel.rendered && tel.rendered() ? tel : null);
    };
    waitFor(pick, (el) => highlightIn(el || tel, search.q));
  });
}

// Open what is folded inside el, then mark every occurrence of q in its text (case-insensitive).
function highlightIn(el, q) {
  if (!el || !q) return;
  for (let round = 0; round < 3; round++) {
    el.querySelectorAll("details:not([open])").forEach(openLazy);
    el.querySelectorAll("button.more").forEach((b) => b.click());
  }
  for (let p = el.parentElement; p; p = p.parentElement) if (p.tagName === "DETAILS" && !p.open) openLazy(p);
  document.querySelectorAll("mark.search-hit").forEach((m) => m.replaceWith(document.createTextNode(m.textContent)));
  const re = new RegExp(escapeRe(q), "gi");
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) if (re.test(n.nodeValue)) nodes.push(n);
  let first = null;
  for (const n of nodes) {
    const text = n.nodeValue;
    const frag = document.createDocumentFragment();
    let last = 0;
    re.lastIndex = 0;
    for (let m = re.exec(text); m; m = re.exec(text)) {
      frag.append(text.slice(last, m.index));
      const mk = h("mark", { class: "search-hit" }, m[0]);
      if (!first) first = mk;
      frag.append(mk);
      last = m.index + m[0].length;
      if (!m[0].length) re.lastIndex++;
    }
    frag.append(text.slice(last));
    n.replaceWith(frag);
  }
  el.classList.add("search-target");
  (first || el).scrollIntoView({ block: "center" });
  window.__tracerViewer.lastHighlight = { marks: document.querySelectorAll("mark.search-hit").length, text: (first || el).textContent.slice(0, 200) };
}

// ------------------------------------------------------------------------------------------- start
window.addEventListener("hashchange", fromHash);
if (!fromHash()) render();
window.__tracerViewer = { painted: performance.now(), sessions: SESSIONS.length, calls: CALLS.length };

// ---------------------------------------------------------------------------------- processes

// The processes that made the calls (records' tracer.process chains), when there are several:
// a collapsed tree of pid, command and calls.
function processPanel() {
  const procs = SUMMARY.processes || [];
  if (procs.length < 2) return null;
  const kids = new Map();
  const known = new Set(procs.map((p) => p.pid));
  for (const p of procs) {
    const up = known.has(p.parent) ? p.parent : null;
    if (!kids.has(up)) kids.set(up, []);
    kids.get(up).push(p);
  }
  const seen = new Set();
  const list = (parent) => h("ul", { class: "proc-tree" }, (kids.get(parent) || []).filter((p) => !seen.has(p.pid)).map((p) => {
    seen.add(p.pid);
    return h("li", null,
      h("span", { class: "pid" }, String(p.pid)), " ", h("code", null, p.command), " ",
      h("span", { class: "calls" }, p.calls ? `${fmtInt(p.calls)} call${p.calls === 1 ? "" : "s"}` : "no calls"),
      kids.has(p.pid) ? list(p.pid) : null);
  }));
  const withCalls = procs.filter((p) => p.calls).length;
  return h("details", { class: "procs" },
    h("summary", null, `${procs.length} processes (${withCalls} with calls)`), list(null));
}
