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
      `${fmtInt(CALLS.length)} calls · in ${fmtTok(tot.in)} · out ${fmtTok(tot.out)} · cache read ${fmtTok(tot.cr)} · cache write ${fmtTok(tot.cc)}`),
    bar, filter,
    SUMMARY.warnings.length ? h("div", { class: "warn" }, `${SUMMARY.warnings.length} log line(s) skipped: ${SUMMARY.warnings.slice(0, 3).join("; ")}`) : null);
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
      h("div", { class: "s-meta" }, `in ${fmtTok(t.in)} · out ${fmtTok(t.out)} · cache ${fmtTok(t.cr)} · ${fmtMs(t.wall_ms)}`),
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
      h("td", null, c.stop || (c.err ? String(c.err).slice(0, 60) : "")));
  });
  return h("table", { class: "calls" },
    h("thead", null, h("tr", null, ["call", "time", "model", "status", "input", "output", "cache read",
      "cache write", "TTFB", "TTFT", "duration", "tok/s", "stop"].map((x) => h("th", null, x)))),
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
      list.append(renderMessage(m, ctx, prod !== undefined ? prod : (final ? th.final : null)));
    }
    if (k < all.length) setTimeout(step, 0);
  };
  step();
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
  const box = h("pre", { class: "pre diff" });
  const parts = diffLines(String(oldText || ""), String(newText || ""));
  for (const p of parts) {
    const cls = p.added ? "add" : p.removed ? "del" : "ctx";
    const sign = p.added ? "+" : p.removed ? "-" : " ";
    let lines = p.value.replace(/\n$/, "").split("\n");
    if (cls === "ctx" && lines.length > 8) {
      lines = [...lines.slice(0, 3), `… ${lines.length - 6} unchanged lines …`, ...lines.slice(-3)];
    }
    for (const l of lines) box.append(h("span", { class: "dl " + cls }, sign + " " + l + "\n"));
  }
  return box;
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
        el.append(lazyDetails(`Subagent conversation (${ct.calls.length} call${ct.calls.length === 1 ? "" : "s"})`, (x) => {
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

function showCall(i) {
  state.view = "raw";
  render();
  const el = document.getElementById("call-" + i);
  if (el) {
    el.open = true;
    el.scrollIntoView({ block: "start" });
  }
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
    ["stop reason", c.stop], ["conversation", c.session !== null ? `session ${c.session + 1}, thread ${c.thread}` : ""]]));
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
  if (rec.rebuilt) body.append(h("p", { class: "hint" }, "Messages API response rebuilt from the SSE stream."));
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
window.addEventListener("hashchange", fromHash);
if (!fromHash()) render();
window.__tracerViewer = { painted: performance.now(), sessions: SESSIONS.length, calls: CALLS.length };
