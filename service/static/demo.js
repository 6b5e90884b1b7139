// The seqserve demo page: forms that call the REST API and render what comes back.
"use strict";

const $ = (id) => document.getElementById(id);

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// The Error for a refused request, carrying the server's message.
function failure(response, data) {
  const message = data && (data.error || data.detail) ? data.error || JSON.stringify(data.detail) : response.statusText;
  return new Error(`${response.status}: ${message}`);
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (_) {
    return null; // not JSON: an error falls back to the status text
  }
}

// POST a JSON body; resolves to the parsed response or throws an Error carrying the server's message.
async function post(path, body, signal = undefined) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  const data = await readJson(response);
  if (!response.ok) throw failure(response, data);
  return data;
}

// POST a JSON body to a Server-Sent Events route; yields {event, data} as each event arrives.
async function* postEvents(path, body) {
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw failure(response, await readJson(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer = (buffer + decoder.decode(value, { stream: !done })).replace(/\r\n/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trim());
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
      if (done) return;
    }
  } finally {
    reader.cancel().catch(() => {}); // the caller stopped early: close the stream, which frees the server's row
  }
}

function setStatus(id, text, isError = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// Runs one form submission: disables the button, shows progress, reports errors in the status line.
function bindForm(prefix, run) {
  $(`${prefix}-form`).addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $(`${prefix}-submit`);
    button.disabled = true;
    setStatus(`${prefix}-status`, "Working…");
    const started = performance.now();
    try {
      await run();
      setStatus(`${prefix}-status`, `Done in ${Math.round(performance.now() - started)} ms.`);
    } catch (err) {
      $(`${prefix}-result`).hidden = true;
      setStatus(`${prefix}-status`, err.message, true);
    } finally {
      button.disabled = false;
    }
  });
}

function cell(tag, text) {
  const el = document.createElement(tag);
  el.textContent = text;
  return el;
}

// Byte-level BPE tokens carry their leading space; show it as a middle dot so it stays visible.
const showToken = (token) => token.replace(/ /g, "·") || "∅";

function modelName(id) {
  const name = $(id).value.trim();
  return name ? name : null; // null: the server picks its only model of that kind
}

async function classify() {
  const data = await post("/v1/classify", { model: modelName("classify-model"), texts: [$("classify-text").value] });
  const result = data.results[0];
  $("classify-label").textContent = result.label;
  $("classify-score").textContent = `(${(result.score * 100).toFixed(1)}%, ${data.model} v${data.version})`;
  const body = $("classify-probabilities").tBodies[0];
  body.replaceChildren();
  const ranked = Object.entries(result.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of ranked) {
    const row = document.createElement("tr");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(p * 160)}px`;
    const barCell = document.createElement("td");
    barCell.append(bar);
    row.append(cell("td", label), cell("td", p.toFixed(3)), barCell);
    body.append(row);
  }
  $("classify-result").hidden = false;
}

// attention: rows are target tokens, columns source tokens (each row sums to 1).
function drawHeatmap(table, sourceTokens, targetTokens, attention) {
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  head.append(cell("th", ""));
  for (const token of sourceTokens) head.append(cell("th", showToken(token)));
  const body = table.createTBody();
  attention.forEach((weights, t) => {
    const row = body.insertRow();
    row.append(cell("th", showToken(targetTokens[t] ?? "")));
    weights.forEach((w, s) => {
      const td = cell("td", w >= 0.1 ? w.toFixed(1) : "");
      td.style.background = `rgba(39, 84, 197, ${Math.min(1, Math.max(0, w)).toFixed(3)})`;
      td.style.color = w > 0.5 ? "#fff" : "#1d2430";
      td.title = `${showToken(targetTokens[t] ?? "")} ← ${showToken(sourceTokens[s] ?? "")}: ${w.toFixed(3)}`;
      row.append(td);
    });
  });
}

async function translate() {
  const beam = parseInt($("translate-beam").value, 10);
  const data = await post("/v1/translate", {
    model: modelName("translate-model"),
    texts: [$("translate-text").value],
    beam_size: Number.isFinite(beam) ? beam : null,
    return_attention: true,
  });
  const result = data.results[0];
  $("translate-output").textContent = result.translation;
  $("translate-score").textContent = `(score ${result.score.toFixed(3)}, ${data.model} v${data.version})`;
  // A text of several sentences is translated sentence by sentence: one heatmap each.
  const parts = result.sentences ?? [result];
  const first = $("attention-heatmap");
  for (const extra of [...first.parentElement.querySelectorAll("table.sentence-heatmap")]) extra.remove();
  parts.forEach((part, i) => {
    let table = first;
    if (i > 0) {
      table = document.createElement("table");
      table.className = "sentence-heatmap";
      first.parentElement.append(table);
    }
    drawHeatmap(table, part.source_tokens, part.target_tokens, part.attention);
  });
  $("translate-result").hidden = false;
}

// A stable hue per entity label, so each label keeps its colour across texts.
function labelHue(label) {
  let h = 0;
  for (const c of label) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

// The text as text nodes, each entity wrapped in a <mark>. Offsets count Unicode code points (Python str
// indices), so slice Array.from(text), not the UTF-16 string; user text never goes through innerHTML.
// Characters from `cut` on were not tagged (the model's max length) and are dimmed.
function drawEntities(container, text, entities, cut) {
  const chars = Array.from(text);
  const plain = (from, to) => {
    if (cut !== null && cut < to) {
      if (from < cut) container.append(chars.slice(from, cut).join(""));
      const rest = cell("span", chars.slice(Math.max(from, cut), to).join(""));
      rest.className = "untagged";
      if (rest.textContent) container.append(rest);
    } else if (from < to) {
      container.append(chars.slice(from, to).join(""));
    }
  };
  container.replaceChildren();
  let at = 0;
  for (const entity of [...entities].sort((a, b) => a.start - b.start || b.end - a.end)) {
    const start = Math.max(0, entity.start);
    const end = Math.min(chars.length, entity.end);
    if (start < at || end <= start) continue; // overlapping or empty: keep the text as it is
    plain(at, start);
    const mark = cell("mark", chars.slice(start, end).join(""));
    mark.className = "entity";
    mark.dataset.label = entity.label;
    mark.title = `${entity.label} ${entity.score.toFixed(2)}`;
    mark.style.setProperty("--hue", String(labelHue(entity.label)));
    const label = cell("span", entity.label);
    label.className = "label";
    mark.append(label);
    container.append(mark);
    at = end;
  }
  plain(at, chars.length);
}

async function tag() {
  const text = $("tag-text").value;
  const data = await post("/v1/tag", { model: modelName("tag-model"), texts: [text] });
  const result = data.results[0];
  const cut = result.truncated_at ?? null;
  drawEntities($("tag-output"), text, result.entities, cut);
  $("tag-count").textContent = result.entities.length ? String(result.entities.length) : "none";
  $("tag-source").textContent = `(${data.model} v${data.version})`;
  const intent = result.intent;
  $("tag-intent-line").hidden = !intent;
  $("tag-intent").textContent = intent ? intent.label : "";
  $("tag-intent-score").textContent = intent ? `(${(intent.score * 100).toFixed(1)}%)` : "";
  const note = $("tag-truncated");
  note.hidden = cut === null;
  note.textContent = cut === null ? ""
    : `The text is longer than the model's maximum length: only its first ${cut} characters were tagged.`;
  const body = $("tag-tokens").tBodies[0];
  body.replaceChildren();
  for (const token of result.tokens) {
    const row = document.createElement("tr");
    row.append(cell("td", token.text), cell("td", token.tag), cell("td", token.score.toFixed(3)));
    body.append(row);
  }
  $("tag-result").hidden = false;
}

// Next-word suggestions as the text changes: one request per pause in typing, and only the answer for the latest
// text is shown (an older one that arrives late is dropped, and its request aborted).
const suggester = { timer: 0, asked: 0, controller: null, shown: null };

function suggestSoon() {
  clearTimeout(suggester.timer);
  suggester.timer = setTimeout(suggest, 150);
}

async function suggest() {
  clearTimeout(suggester.timer);
  const text = $("complete-text").value;
  const asked = ++suggester.asked;
  suggester.controller?.abort();
  suggester.controller = null;
  if (!text.trim()) { // the server refuses an empty text
    drawSuggestions(null);
    setStatus("complete-status", "");
    return;
  }
  const controller = new AbortController();
  suggester.controller = controller;
  try {
    const data = await post("/v1/complete", { model: modelName("complete-model"), texts: [text], k: 5 },
      controller.signal);
    if (asked !== suggester.asked) return;
    const result = data.results[0];
    drawSuggestions({ text, ...result });
    setStatus("complete-status", result.suggestions.length ? `${data.model} v${data.version}` : "No suggestions.");
  } catch (err) {
    if (asked !== suggester.asked) return; // aborted, or late: a newer request owns the panel
    drawSuggestions(null);
    setStatus("complete-status", err.message, true);
  }
}

const percent = (p) => (p >= 0.001 ? `${(p * 100).toFixed(1)}%` : "<0.1%");

// shown: {text, partial, suggestions} for the text the suggestions were made for, or null to clear them.
function drawSuggestions(shown) {
  suggester.shown = shown;
  const box = $("complete-suggestions");
  box.replaceChildren();
  if (shown) box.dataset.text = shown.text;
  else delete box.dataset.text;
  for (const { word, probability } of shown ? shown.suggestions : []) {
    const chip = cell("button", word);
    chip.type = "button";
    chip.className = "chip";
    chip.dataset.word = word;
    chip.title = `P(next word = ${word}) = ${probability.toFixed(4)}`;
    const p = cell("span", percent(probability));
    p.className = "p";
    chip.append(p);
    box.append(chip);
  }
}

// A chip's word replaces the partial word it completes, then a space; the next words are asked for at once.
function insertSuggestion(word) {
  const { text, partial } = suggester.shown;
  const field = $("complete-text");
  field.value = `${text.slice(0, text.length - partial.length)}${word} `;
  field.focus();
  field.setSelectionRange(field.value.length, field.value.length);
  suggest();
}

async function generate() {
  const prompt = $("complete-text").value;
  const tokens = parseInt($("generate-max-tokens").value, 10);
  const temperature = parseFloat($("generate-temperature").value);
  const seed = parseInt($("generate-seed").value, 10);
  const body = {
    model: modelName("complete-model"),
    text: prompt,
    ...(Number.isFinite(tokens) ? { max_tokens: tokens } : {}),
    ...(Number.isFinite(temperature) ? { temperature } : {}),
    seed: Number.isFinite(seed) ? seed : null, // null: the server draws one and says which
  };
  const output = $("generate-output");
  $("generate-prompt").textContent = prompt;
  output.textContent = "";
  $("generate-info").textContent = "";
  $("generate-result").hidden = false;
  for await (const { event, data } of postEvents("/v1/generate/stream", body)) {
    if (event === "token") {
      output.textContent += data.text;
    } else if (event === "done") {
      output.textContent = data.text; // the whole result: what a stop string cut off is gone
      $("generate-info").textContent = `${data.token_ids.length} tokens, ${data.finish_reason}, seed ${data.seed}`
        + ` (${data.model} v${data.version})`;
      return;
    } else if (event === "error") {
      throw new Error(data.error);
    }
  }
  throw new Error("the stream ended without a result");
}

bindForm("classify", classify);
bindForm("translate", translate);
bindForm("tag", tag);
bindForm("generate", generate);
$("complete-text").addEventListener("input", suggestSoon);
$("complete-model").addEventListener("change", suggest);
$("complete-form").addEventListener("submit", (event) => {
  event.preventDefault(); // Enter in the model field: ask now rather than reload the page
  suggest();
});
$("complete-suggestions").addEventListener("click", (event) => {
  const chip = event.target.closest("button.chip");
  if (chip) insertSuggestion(chip.dataset.word);
});
