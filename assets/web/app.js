// rnmt serve's web page: LibreTranslate's API, from this same server, no libraries.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { settings: null, languages: [], timer: null, request: 0 };

async function getJson(path) {
  const r = await fetch(path);
  return r.json();
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function fillTargets() {
  const source = $("source").value;
  const previous = $("target").value;
  const known = state.languages.find((l) => l.code === source);
  // With auto-detection every language that is some language's target is offered.
  const codes = known
    ? known.targets
    : [...new Set(state.languages.flatMap((l) => l.targets))];
  const target = $("target");
  target.replaceChildren(
    ...codes.map((c) => {
      const l = state.languages.find((x) => x.code === c);
      return new Option(l ? l.name : c, c);
    })
  );
  if (codes.includes(previous)) target.value = previous;
}

function updateCounter() {
  const n = [...$("input").value].length;
  const limit = state.settings ? state.settings.charLimit : 0;
  const counter = $("counter");
  counter.textContent = `${n} / ${limit}`;
  counter.classList.toggle("over", limit > 0 && n > limit);
}

function schedule() {
  updateCounter();
  clearTimeout(state.timer);
  const wait = state.settings ? state.settings.frontendTimeout : 500;
  state.timer = setTimeout(translate, wait);
}

async function translate() {
  clearTimeout(state.timer);
  const q = $("input").value;
  const id = ++state.request;
  if (!q.trim()) {
    $("output").value = "";
    showAlternatives([]);
    showError("");
    $("status").textContent = "";
    return;
  }
  // Alternatives are offered for one short sentence, as LibreTranslate's page does.
  const single = !q.includes("\n") && q.length < 200;
  const body = { q, source: $("source").value, target: $("target").value, format: "text" };
  if (single) body.alternatives = 3;
  $("status").textContent = "Translating…";
  let data;
  let ok = false;
  try {
    const r = await fetch("/translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    ok = r.ok;
    data = await r.json();
  } catch (e) {
    data = { error: `The server cannot be reached (${e.message})` };
  }
  if (id !== state.request) return; // a newer request is under way
  $("status").textContent = "";
  if (!ok || data.error) {
    showError(data.error || "Translation failed");
    $("output").value = "";
    showAlternatives([]);
    return;
  }
  showError("");
  $("output").value = data.translatedText;
  if (data.detectedLanguage) {
    const l = state.languages.find((x) => x.code === data.detectedLanguage.language);
    $("status").textContent = `Detected: ${l ? l.name : data.detectedLanguage.language}`;
  }
  showAlternatives(data.alternatives || []);
  loadAttention();
}

function showAlternatives(list) {
  const ul = $("alternatives");
  ul.replaceChildren(
    ...list.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      li.tabIndex = 0;
      li.title = "Use this translation";
      const use = () => {
        $("output").value = text;
      };
      li.addEventListener("click", use);
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter") use();
      });
      return li;
    })
  );
  $("alternatives-box").hidden = list.length === 0;
}

// The attention of the current text's sentences, fetched when the box is open.
const attention = { sentences: [], key: "" };

async function loadAttention() {
  if (!$("attention-box").open) return;
  const q = $("input").value;
  const key = `${$("source").value}|${$("target").value}|${q}`;
  if (!q.trim() || key === attention.key) return;
  attention.key = key;
  const r = await fetch("/v1/translate", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ q, source: $("source").value, target: $("target").value, attention: true }),
  });
  const data = await r.json();
  if (!r.ok || data.error) {
    showError(data.error || "Attention failed");
    return;
  }
  attention.sentences = data.results.sentences.filter((s) => s.attention);
  $("sentence").replaceChildren(...attention.sentences.map((s, i) => new Option(s.source, i)));
  drawHeatmap();
}

function drawHeatmap() {
  const s = attention.sentences[Number($("sentence").value) || 0];
  const table = $("heatmap");
  if (!s) {
    table.replaceChildren();
    return;
  }
  const { source, target, weights } = s.attention;
  const head = document.createElement("thead");
  const top = head.insertRow();
  top.appendChild(document.createElement("th"));
  for (const piece of source) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = piece;
    top.appendChild(th);
  }
  const body = document.createElement("tbody");
  weights.forEach((row, j) => {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = target[j] ?? "";
    tr.appendChild(th);
    row.forEach((w, i) => {
      const td = tr.insertCell();
      td.style.background = `rgba(11, 92, 173, ${Math.min(1, w).toFixed(3)})`;
      td.title = `${target[j]} → ${source[i]}: ${w.toFixed(2)}`;
    });
  });
  table.replaceChildren(head, body);
}

function swap() {
  const source = $("source");
  const target = $("target");
  const from = source.value === "auto" ? null : source.value;
  const to = target.value;
  const back = state.languages.find((l) => l.code === to);
  if (!back || (from && !back.targets.includes(from))) {
    showError(`No model translates from ${to}${from ? ` to ${from}` : ""}`);
    return;
  }
  source.value = to;
  fillTargets();
  target.value = from || back.targets[0];
  const translated = $("output").value;
  if (translated) $("input").value = translated;
  $("output").value = "";
  translate();
}

async function start() {
  try {
    [state.settings, state.languages] = await Promise.all([
      getJson("/frontend/settings"),
      getJson("/languages"),
    ]);
  } catch (e) {
    showError(`Cannot load the server's settings (${e.message})`);
    return;
  }
  const sources = state.languages.filter((l) => l.targets.length > 0);
  $("source").replaceChildren(
    new Option("Detect language", "auto"),
    ...sources.map((l) => new Option(l.name, l.code))
  );
  $("source").value = state.settings.language.source.code;
  fillTargets();
  $("target").value = state.settings.language.target.code;
  updateCounter();
  $("source").addEventListener("change", () => {
    fillTargets();
    translate();
  });
  $("target").addEventListener("change", translate);
  $("input").addEventListener("input", schedule);
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate();
  });
  $("swap").addEventListener("click", swap);
  $("attention-box").addEventListener("toggle", loadAttention);
  $("sentence").addEventListener("change", drawHeatmap);
  $("clear").addEventListener("click", () => {
    $("input").value = "";
    translate();
    updateCounter();
    $("input").focus();
  });
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("output").value);
      $("status").textContent = "Copied";
    } catch (e) {
      $("output").select();
      $("status").textContent = "Press Ctrl+C to copy";
    }
  });
  document.body.dataset.ready = "true";
}

start();
