// The page: a conversation in Austen's dialogue form (/v1/chat/completions) and free writing
// (/v1/completions), both streamed as server-sent events and shown as they arrive.
"use strict";

const $ = (id) => document.getElementById(id);
let messages = [];          // the conversation so far, as the API takes it
let running = null;         // the AbortController of the request in flight

function setStatus(text) { $("status").textContent = text; }

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function options() {
  return { temperature: Number($("temperature").value), max_tokens: Number($("max-tokens").value), stream: true };
}

// POST a request and call onText with each piece of text as it streams in.
async function stream(path, body, onText) {
  running = new AbortController();
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: running.signal });
  if (!response.ok) {
    const failure = await response.json().catch(() => ({}));
    if (response.status === 401) $("key-label").hidden = false;
    throw new Error((failure.error && failure.error.message) || response.statusText);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        const text = choice.delta ? choice.delta.content : choice.text;
        if (text) onText(text);
      }
    }
  }
}

function paragraph(text, cls) {
  const p = document.createElement("p");
  p.className = cls;
  p.textContent = text;
  $("transcript").appendChild(p);
  p.scrollIntoView({ block: "end" });
  return p;
}

async function speak(event) {
  event.preventDefault();
  const line = $("line").value.trim();
  if (!line || running) return;
  const you = $("as").value.trim() || "Elizabeth", them = $("with").value.trim() || "Mr. Darcy";
  $("line").value = "";
  $("send").disabled = true;
  paragraph(`“${line}” said ${you}.`, "said");
  messages.push({ role: "user", content: line, name: you });
  const p = paragraph(`${them} replied, “`, "reply pending");
  let reply = "";
  setStatus(`${them} is answering…`);
  try {
    await stream("/v1/chat/completions", { messages, as: you, with: them, ...options() }, (text) => {
      reply += text;
      p.textContent = `${them} replied, “${reply}`;
    });
    p.textContent = `${them} replied, “${reply.trim()}”`;
    messages.push({ role: "assistant", content: reply, name: them });
    setStatus("");
  } catch (e) {
    setStatus(e.name === "AbortError" ? "" : "Failed: " + e.message);
    messages.pop();
  } finally {
    p.classList.remove("pending");
    p.dataset.done = "true";
    running = null;
    $("send").disabled = false;
    $("line").focus();
  }
}

async function write() {
  if (running) return;
  const area = $("text");
  $("continue").disabled = true;
  $("stop-writing").disabled = false;
  setStatus("Writing…");
  try {
    await stream("/v1/completions", { prompt: area.value, ...options() }, (text) => {
      area.value += text;
      area.scrollTop = area.scrollHeight;
    });
    setStatus("");
  } catch (e) {
    setStatus(e.name === "AbortError" ? "" : "Failed: " + e.message);
  } finally {
    running = null;
    $("continue").disabled = false;
    $("stop-writing").disabled = true;
  }
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t === tab);
    for (const pane of document.querySelectorAll(".pane")) pane.classList.toggle("active", pane.id === tab.dataset.pane);
  });
}
$("talk-form").addEventListener("submit", speak);
$("continue").addEventListener("click", write);
$("stop-writing").addEventListener("click", () => running && running.abort());
$("restart").addEventListener("click", () => { messages = []; $("transcript").textContent = ""; });
fetch("/v1/models", { headers: headers() }).then((r) => { if (r.status === 401) $("key-label").hidden = false; });
$("line").focus();
