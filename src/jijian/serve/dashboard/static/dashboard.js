// jijian dashboard: live serving figures (polled JSON) and the streaming chat playground.
// Plain browser JavaScript, no build step and no external script. The session cookie (HttpOnly)
// authenticates both /ui/api/* and /v1/*: this script never sees an API key.
"use strict";

function fmt(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  const abs = Math.abs(value);
  if (abs >= 1e6) return (value / 1e6).toPrecision(3) + "M";
  if (abs >= 1e4) return (value / 1e3).toPrecision(3) + "k";
  return Number(value.toPrecision(digits || 4)).toString();
}
const ms = (s) => (s === null || s === undefined ? "—" : (1000 * s).toFixed(1) + " ms");
const pct = (v) => (v === null || v === undefined ? "—" : (100 * v).toFixed(1) + "%");

function percentiles(p) {
  return p ? `${ms(p.p50)} / ${ms(p.p90)} / ${ms(p.p99)}` : "—";
}

function setField(root, name, text) {
  const el = root.querySelector(`[data-field="${name}"]`);
  if (el) el.textContent = text;
}

function startServingPoll(root) {
  const history = [];
  const line = document.querySelector("#rate-chart polyline");
  async function poll() {
    try {
      const response = await fetch(root.dataset.endpoint, { credentials: "same-origin" });
      if (response.status === 401) { window.location = "/ui/login?next=/ui/serving"; return; }
      const d = await response.json();
      setField(root, "live_tokens_per_s", fmt(d.live_tokens_per_s));
      setField(root, "busy_tokens_per_s", fmt(d.busy_tokens_per_s));
      setField(root, "ttft", percentiles(d.latency.ttft));
      setField(root, "tpot", percentiles(d.latency.tpot));
      setField(root, "queue_depth", String(d.queue_depth));
      setField(root, "batch", `${d.running} / ${d.batch_size}`);
      setField(root, "kv_cache_usage", pct(d.kv_cache_usage));
      setField(root, "cost_per_million_tokens",
        d.cost_per_million_tokens === null ? "— (set [hardware] rent_per_device_hour)" : `${fmt(d.cost_per_million_tokens)} ${d.currency}`);
      setField(root, "updated", new Date().toLocaleTimeString());
      const body = root.querySelector('[data-field="usage"]');
      body.replaceChildren();
      const users = Object.entries(d.usage);
      for (const [user, u] of users) {
        const row = body.insertRow();
        for (const v of [user, u.requests, u.prompt_tokens, u.completion_tokens, u.cost === null ? "—" : fmt(u.cost)]) {
          row.insertCell().textContent = String(v);
        }
      }
      if (!users.length) {
        const cell = body.insertRow().insertCell();
        cell.colSpan = 5; cell.className = "empty"; cell.textContent = "No requests yet.";
      }
      history.push(d.live_tokens_per_s);
      if (history.length > 60) history.shift();
      const top = Math.max(1, ...history);
      line.setAttribute("points", history.map((v, i) => `${10 + i * 9},${110 - (v / top) * 85}`).join(" "));
    } catch (err) {
      setField(root, "updated", "failed: " + err);
    }
  }
  poll();
  setInterval(poll, 2000);
}

// Server-sent events from /v1/chat/completions: "data: {json}\n\n" ... "data: [DONE]".
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

function addTurn(log, role, text) {
  const turn = document.createElement("div");
  turn.className = `turn ${role}`;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("div");
  body.className = "content";
  body.textContent = text;
  turn.append(label, body);
  log.append(turn);
  return turn;
}

function showCitations(turn, citations) {
  const list = document.createElement("ol");
  list.className = "citations";
  for (const c of citations) {
    const item = document.createElement("li");
    item.textContent = `[${c.index}] ${c.source} (score ${fmt(c.score, 3)})`;
    list.append(item);
  }
  const title = document.createElement("div");
  title.className = "citations-title";
  title.textContent = citations.length ? "Citations" : "No passages retrieved (none you may read matched).";
  turn.append(title, list);
}

function startChat(form) {
  const log = document.getElementById("chat-log");
  const input = document.getElementById("chat-input");
  const messages = [];
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    messages.push({ role: "user", content: text });
    addTurn(log, "user", text);
    const turn = addTurn(log, "assistant", "");
    turn.classList.add("streaming");
    const content = turn.querySelector(".content");
    const body = {
      model: form.dataset.model,
      messages,
      stream: true,
      max_tokens: Number(document.getElementById("chat-max-tokens").value),
      temperature: Number(document.getElementById("chat-temperature").value),
    };
    const collection = document.getElementById("chat-collection").value;
    if (collection) body.rag = { collection, top_k: Number(document.getElementById("chat-top-k").value) };
    const send = document.getElementById("chat-send");
    send.disabled = true;
    let answer = "";
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (!response.ok) {
        const error = await response.json().catch(() => ({}));
        throw new Error((error.error && error.error.message) || `HTTP ${response.status}`);
      }
      let citations = null;
      for await (const chunk of sseEvents(response)) {
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.citations && citations === null) citations = chunk.citations;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          answer += delta.content;
          content.textContent = answer;
        }
        if (chunk.usage) turn.dataset.completionTokens = String(chunk.usage.completion_tokens);
      }
      messages.push({ role: "assistant", content: answer });
      if (citations !== null) showCitations(turn, citations);
      turn.classList.add("done");
    } catch (err) {
      messages.pop();
      const error = document.createElement("p");
      error.className = "error";
      error.setAttribute("role", "alert");
      error.textContent = String(err.message || err);
      turn.append(error);
      turn.classList.add("failed");
    } finally {
      turn.classList.remove("streaming");
      send.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const serving = document.getElementById("serving");
  if (serving) startServingPoll(serving);
  const form = document.getElementById("chat-form");
  if (form) startChat(form);
});
