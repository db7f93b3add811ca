// mnistlab draw-a-digit page: plain JS, no dependencies.
// The canvas is sent as a PNG upload, so a drawing goes through the same preprocessing as `mnistlab predict`.
"use strict";

// With ?run=ID (opened from the runs explorer) the page uses that run's model, through /api/runs/ID/...
const RUN = new URLSearchParams(location.search).get("run");
const API = RUN ? "/api/runs/" + RUN.split("/").map(encodeURIComponent).join("/") : "/api";
const INK_WIDTH = 20; // px on the 280x280 canvas: about MNIST's stroke width once the digit is scaled to 20x20
const LIVE_MS = 150; // while drawing, predict at most this often
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const statusLine = document.getElementById("status");
const predictionEl = document.getElementById("prediction");
const confidenceEl = document.getElementById("confidence");
const barsEl = document.getElementById("bars");

let drawing = false;
let last = null;
let inked = false;
let timer = null;
let latest = 0; // id of the latest request sent; older answers are dropped
let inflight = 0;
let shownRequest = null; // how the shown result was asked for (why.js sends the same image to /explain)

// ---------------------------------------------------------------- display
const bars = [];
for (let d = 0; d < 10; d++) {
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.dataset.digit = String(d);
  bar.innerHTML = '<span class="pct"></span><div class="track"><div class="fill" style="height:0"></div></div><span class="label">' + d + "</span>";
  barsEl.appendChild(bar);
  bars.push(bar);
}

function setStatus(text, error = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", error);
}

function paint(canvas, pixels) {
  const g = canvas.getContext("2d");
  const img = g.createImageData(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const v = Math.round(Math.min(1, Math.max(0, pixels[y][x])) * 255);
      const i = (y * 28 + x) * 4;
      img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
      img.data[i + 3] = 255;
    }
  }
  g.putImageData(img, 0, 0);
}

function showResult(res) {
  const top = res.blank ? -1 : res.prediction;
  predictionEl.textContent = res.blank ? "–" : String(res.prediction);
  confidenceEl.textContent = res.blank
    ? "blank: no ink to classify"
    : (100 * res.probabilities[res.prediction]).toFixed(1) + "% sure";
  res.probabilities.forEach((p, d) => {
    const shown = res.blank ? 0 : p;
    bars[d].querySelector(".fill").style.height = (100 * shown).toFixed(1) + "%";
    bars[d].querySelector(".pct").textContent = shown >= 0.005 ? Math.round(100 * shown) + "%" : "";
    bars[d].classList.toggle("top", d === top);
  });
  paint(seen, res.input);
  document.dispatchEvent(new CustomEvent("mnistlab:result", { detail: res }));
}

function resetResult() {
  showResult({ blank: true, prediction: null, probabilities: Array(10).fill(0), input: Array(28).fill(Array(28).fill(0)) });
  predictionEl.textContent = "–";
  confidenceEl.innerHTML = "&nbsp;";
}

function setBusy(delta) {
  inflight += delta;
  document.body.dataset.busy = inflight > 0 ? "true" : "false";
}

// ---------------------------------------------------------------- API
async function predict(makeRequest, what) {
  const id = ++latest;
  setBusy(+1);
  try {
    const init = await makeRequest();
    const r = await fetch(API + "/predict", Object.assign({ method: "POST" }, init));
    const body = await r.json().catch(() => ({ detail: r.statusText }));
    if (id !== latest) return;
    if (!r.ok) {
      setStatus("error " + r.status + ": " + (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)), true);
      return;
    }
    shownRequest = makeRequest;
    showResult(body);
    setStatus(what);
  } catch (err) {
    if (id === latest) setStatus("request failed: " + err, true);
  } finally {
    setBusy(-1);
  }
}

function canvasPng() {
  return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
}

function predictCanvas() {
  clearTimeout(timer);
  timer = null;
  if (!inked) return;
  predict(async () => {
    const form = new FormData();
    form.append("file", await canvasPng(), "drawing.png");
    return { body: form };
  }, "your drawing");
}

// ---------------------------------------------------------------- drawing (mouse, pen and touch)
function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  inked = false;
}

function point(e) {
  const r = pad.getBoundingClientRect();
  return { x: ((e.clientX - r.left) * pad.width) / r.width, y: ((e.clientY - r.top) * pad.height) / r.height };
}

function line(a, b) {
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = INK_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(a.x, a.y);
  ctx.lineTo(b.x, b.y);
  ctx.stroke();
  inked = true;
}

pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  drawing = true;
  last = point(e);
  line(last, last);
});

pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
  for (const ev of events.length ? events : [e]) {
    const p = point(ev);
    line(last, p);
    last = p;
  }
  if (timer === null) timer = setTimeout(predictCanvas, LIVE_MS); // live, but throttled
});

function endStroke() {
  if (!drawing) return;
  drawing = false;
  predictCanvas();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  clearTimeout(timer);
  timer = null;
  latest++; // answers still on their way are for the old drawing
  clearPad();
  shownRequest = null;
  resetResult();
  setStatus("Draw a digit with the mouse, a pen or a finger.");
});

document.getElementById("upload").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file) return;
  clearPad();
  predict(async () => {
    const form = new FormData();
    form.append("file", file, file.name);
    return { body: form };
  }, "uploaded " + file.name);
});

document.getElementById("upload-label").addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    document.getElementById("upload").click();
  }
});

// ---------------------------------------------------------------- model info and gallery
async function loadModelInfo() {
  const el = document.getElementById("model-info");
  try {
    const r = await fetch(API + "/model");
    const m = await r.json();
    if (!r.ok) throw new Error(m.detail || r.statusText);
    const acc = m.test_acc == null ? "test accuracy unknown" : "test accuracy " + Number(m.test_acc).toFixed(2) + "%";
    el.textContent = (RUN ? "run " + RUN + " · " : "") + "model " + m.name + (m.preset ? " (preset " + m.preset + ")" : "") + " · " +
      Number(m.params).toLocaleString("en") + " parameters · " + acc;
  } catch (err) {
    el.textContent = "model information unavailable: " + err.message;
  }
}

async function loadGallery() {
  const gallery = document.getElementById("gallery");
  try {
    const r = await fetch(API + "/samples?n=12");
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail);
    gallery.replaceChildren();
    for (const s of body.samples) {
      const item = document.createElement("button");
      item.type = "button";
      item.className = "sample";
      const c = document.createElement("canvas");
      c.width = c.height = 28;
      paint(c, s.pixels);
      const ok = s.prediction === s.label;
      item.dataset.label = String(s.label);
      item.dataset.prediction = String(s.prediction);
      item.title = "test image #" + s.index + ": label " + s.label + ", predicted " + s.prediction +
        " (" + (100 * s.confidence).toFixed(1) + "%)";
      const caption = document.createElement("div");
      caption.className = ok ? "ok" : "wrong";
      caption.textContent = ok ? "→ " + s.prediction : "→ " + s.prediction + " (is " + s.label + ")";
      item.append(c, caption);
      item.addEventListener("click", () => {
        // the gallery's own result: the test image exactly as the model saw it, no re-preprocessing
        clearPad();
        latest++;
        shownRequest = async () => ({ headers: { "content-type": "application/json" }, body: JSON.stringify({ index: s.index }) });
        showResult({ prediction: s.prediction, probabilities: s.probabilities, blank: false, input: s.pixels });
        setStatus("test image #" + s.index + " (label " + s.label + ")");
      });
      gallery.appendChild(item);
    }
  } catch (err) {
    gallery.textContent = "gallery unavailable: " + err.message;
  }
}

// Links to the runs explorer when this server has one.
async function loadNav() {
  let health = {};
  try {
    health = await (await fetch("/api/health")).json();
  } catch (err) {
    return;
  }
  if (!health.runs) return;
  const nav = document.getElementById("nav");
  nav.append(Object.assign(document.createElement("a"), { href: "/runs", textContent: "Runs" }));
  if (RUN) {
    nav.append(" · ", Object.assign(document.createElement("a"), { href: "/run?id=" + encodeURIComponent(RUN),
      textContent: "run " + RUN }));
  }
  nav.hidden = false;
}

document.getElementById("more").addEventListener("click", loadGallery);
clearPad();
resetResult();
setBusy(0);
loadModelInfo();
loadGallery();
loadNav();
