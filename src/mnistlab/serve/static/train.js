// Watch it learn (/train): start a run and follow its server-sent events. Plain JS, no dependencies; the charts
// are explorer.js's lineChart. A reload re-attaches to the run named in the address (?id=), or to the run the
// server is training; a dropped stream is resumed by EventSource itself with Last-Event-ID.
"use strict";

const $ = (id) => document.getElementById(id);
const runs = [];  // [{id, start, steps: [[x, loss]], probe: [[x, acc]], epochs: [row], color}]
let source = null;
let current = 0;  // the index in `runs` of the run being followed

function fields(compare) {
  const f = $("train-form");
  const num = (name) => (f[name].value === "" ? null : Number(f[name].value));
  const body = { preset: f.preset.value, optimizer: f.optimizer.value, lr: num("lr"), batch_size: num("batch_size"),
    epochs: num("epochs"), seed: num("seed"), subset: num("subset"), test_subset: num("test_subset"),
    double_softmax: f.double_softmax.checked };
  if (compare) body.compare = true;
  return body;
}

async function start(compare) {
  $("form-error").textContent = "";
  const r = await fetch("/api/train", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify(fields(compare)) });
  const body = await r.json();
  if (!r.ok) { $("form-error").textContent = body.detail; return; }
  const ids = [body.id].concat(body.then ? [body.then.id] : []);
  history.replaceState(null, "", "/train?" + ids.map((i) => "id=" + encodeURIComponent(i)).join("&"));
  watch(ids);
}

function reset(ids) {
  if (source) source.close();
  runs.length = 0;
  for (const [i, id] of ids.entries()) runs.push({ id, start: null, steps: [], probe: [], epochs: [], color: COLORS[i] });
  for (const id of ["live", "charts-card"]) $(id).hidden = false;
  $("end").hidden = true;
  $("curves").replaceChildren();
}

// Follow each run of `ids` in turn (a pair: the SGD run after the first).
function watch(ids) {
  reset(ids);
  follow(0);
}

function follow(i) {
  const run = runs[i];
  current = i;
  $("run-name").textContent = run.id;
  setState("queued");
  $("cancel").disabled = false;
  source = new EventSource("/api/train/" + run.id.split("/").map(encodeURIComponent).join("/") + "/events");
  source.onmessage = (m) => {
    const e = JSON.parse(m.data);
    if (e.type === "start") onStart(run, e);
    else if (e.type === "step") onStep(run, e);
    else if (e.type === "snapshot") onSnapshot(run, e);
    else if (e.type === "epoch") { run.epochs.push(e); drawCharts(); }
    else if (e.type === "end") {
      source.close();
      if (e.state === "done" && i + 1 < runs.length) follow(i + 1);
      else finish(run, e);
    }
  };
}

function setState(state) {
  const el = $("state");
  el.textContent = state;
  el.className = "badge state-" + state;
  document.body.dataset.state = state;
}

function onStart(run, e) {
  run.start = e;
  run.x = (step) => step / e.steps_per_epoch;
  setState("running");
  $("message").textContent = `${e.preset} · ${e.optimizer} · ${e.epochs} epochs of ${e.steps_per_epoch} steps ` +
    `(batch ${e.batch_size})`;
  drawPanel(e);
  $("pictures").hidden = !e.conv;
}

function onStep(run, e) {
  run.steps.push([run.x(e.global_step), e.loss]);
  $("progress").value = e.progress;
  $("speed").textContent = `${Math.round(e.images_per_s).toLocaleString()} images/s`;
  $("eta").textContent = `${duration(e.eta_s)} left`;
  drawCharts();
}

function onSnapshot(run, e) {
  run.probe.push([run.x(e.global_step), e.probe_acc]);
  updatePanel(run.start, e.panel);
  if (e.filters) drawGrid($("filters"), e.filters.shape, e.filters.values, true);
  if (e.maps) {
    drawGrid($("maps"), e.maps.shape, Array.from(atob(e.maps.u8), (c) => c.charCodeAt(0)), false);
    $("maps-note").textContent = `of test digit #${run.start.digit.index} (a ${run.start.digit.label}), ` +
      `${e.maps.shape[0]} maps of ${e.maps.shape[1]}×${e.maps.shape[2]}`;
  }
  $("filters-note").textContent = `after ${e.global_step} steps; ${run.start.probe} fixed test images: ${pct(e.probe_acc)}`;
  drawCharts();
}

function pct(v) { return (typeof v === "number" ? v.toFixed(1) : "–") + "%"; }

async function finish(run, e) {
  setState(e.state);
  $("cancel").disabled = true;
  if (e.state === "done") $("progress").value = 1;
  $("eta").textContent = "";
  const st = await (await fetch("/api/train/" + run.id.split("/").map(encodeURIComponent).join("/"))).json();
  $("message").textContent = e.message || st.message || "";
  $("end").hidden = false;
  $("link-explorer").href = st.links.explorer;
  $("link-explain").href = st.links.explanations;
  $("link-draw").hidden = !st.links.draw;
  if (st.links.draw) $("link-draw").href = st.links.draw;
  const pair = runs.length > 1 && runs.every((r) => r.epochs.length);
  $("link-compare").hidden = !pair;
  if (pair) $("link-compare").href = "/compare?" + runs.map((r) => "id=" + encodeURIComponent(r.id)).join("&");
  $("resume").hidden = !st.resume;
  $("resume-command").textContent = st.resume || "";
}

// ------------------------------------------------------------ pictures
function grey(v) { return [v, v, v, 255]; }

// Draw (C, H, W) values as a grid of C tiles, 8 per row, 1 pixel apart. `shared`: one scale for every tile
// (filters: their sizes compare), else each tile is already 0..255.
function drawGrid(canvas, [c, hgt, wid], values, shared) {
  const cols = Math.min(8, c), rows = Math.ceil(c / cols);
  canvas.width = cols * (wid + 1) - 1;
  canvas.height = rows * (hgt + 1) - 1;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  let scale = (v) => v;
  if (shared) {
    const m = Math.max(...values.map(Math.abs)) || 1;
    scale = (v) => Math.round(127.5 + 127.5 * (v / m));
  }
  for (let k = 0; k < c; k++) {
    const ox = (k % cols) * (wid + 1), oy = Math.floor(k / cols) * (hgt + 1);
    for (let y = 0; y < hgt; y++) {
      for (let x = 0; x < wid; x++) {
        const p = ((oy + y) * canvas.width + ox + x) * 4;
        img.data.set(grey(scale(values[(k * hgt + y) * wid + x])), p);
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawPanel(start) {
  const panel = $("panel");
  panel.replaceChildren();
  $("panel-card").hidden = false;
  for (const d of start.panel) {
    const canvas = h("canvas", { width: 28, height: 28 });
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(28, 28);
    Array.from(atob(d.pixels), (ch, i) => img.data.set(grey(ch.charCodeAt(0)), i * 4));
    ctx.putImageData(img, 0, 0);
    const fig = h("figure", { class: "digit-card" + (d.index === start.digit.index ? " chosen" : ""),
      dataset: { index: d.index, label: d.label } }, canvas, h("figcaption", {}, "…"));
    panel.append(fig);
  }
}

function updatePanel(start, answers) {
  const figs = $("panel").querySelectorAll("figure");
  answers.forEach(([pred, conf], i) => {
    const fig = figs[i];
    if (!fig) return;
    fig.dataset.pred = pred;
    fig.classList.toggle("wrong", pred !== start.panel[i].label);
    fig.querySelector("figcaption").textContent = `${pred} · ${Math.round(conf * 100)}%`;
  });
}

// ------------------------------------------------------------ charts
function drawCharts() {
  const two = runs.length > 1;
  const name = (r, what) => (two ? `${r.start ? r.start.optimizer : r.id}: ` : "") + what;
  const loss = [], acc = [];
  runs.forEach((r, i) => {
    const color = two ? r.color : null;
    loss.push({ label: name(r, "train loss (steps)"), color: color || COLORS[0], points: r.steps });
    loss.push({ label: name(r, "test loss (epochs)"), color: color || COLORS[2], dash: "6 4",
      points: r.epochs.filter((e) => typeof e.test_loss === "number").map((e) => [e.epoch, e.test_loss]) });
    acc.push({ label: name(r, "fixed test images (snapshots)"), color: color || COLORS[1], dash: "2 3",
      points: r.probe });
    for (const [k, split] of ["train", "val", "test"].entries()) {
      const pts = r.epochs.filter((e) => typeof e[split + "_acc"] === "number").map((e) => [e.epoch, e[split + "_acc"]]);
      acc.push({ label: name(r, `${split} accuracy (epochs)`), color: color || COLORS[[0, 3, 2][k]],
        dash: DASH[split], points: pts });
    }
  });
  $("curves").replaceChildren(lineChart("loss", "loss", loss), lineChart("accuracy", "accuracy (%)", acc));
}

// ------------------------------------------------------------ the page
$("train-form").addEventListener("submit", (ev) => { ev.preventDefault(); start(false); });
$("compare").addEventListener("click", () => start(true));
$("cancel").addEventListener("click", async () => {
  const run = runs[current];
  $("cancel").disabled = true;
  await fetch("/api/train/" + run.id.split("/").map(encodeURIComponent).join("/") + "/cancel", { method: "POST" });
});
$("optimizer").addEventListener("change", () => {
  $("lr").value = $("optimizer").value === "adam" ? "0.001" : "0.01";  // compare's default for SGD
});

(async () => {
  const ids = new URLSearchParams(location.search).getAll("id");
  if (ids.length) { watch(ids); return; }
  const now = await (await fetch("/api/train")).json();
  if (now.id) watch(now.pair.length ? now.pair : [now.id]);
})();
