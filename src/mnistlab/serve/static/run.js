// One run: learning curves, config and environment, and the saved model's confusion matrix with click-through.
"use strict";

const RUN_ID = new URLSearchParams(location.search).get("id") || "";
const API = apiRun(RUN_ID);
const METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr",
  "seconds", "eval_seconds", "images_per_s"];
let shownUpdate = null;

function thumb(img) {
  const wrong = img.label !== img.prediction;
  return h("figure", { class: "thumb" + (wrong ? " wrong" : ""), dataset: { index: img.index } },
    h("img", { src: img.png, alt: `test image ${img.index}`, width: 56, height: 56 }),
    h("figcaption", {}, wrong ? `${img.prediction} (is ${img.label})` : String(img.prediction),
      h("br"), (100 * img.confidence).toFixed(1) + "%"),
  );
}

function renderDetail(run) {
  document.title = "mnistlab · " + run.id;
  document.getElementById("title").textContent = run.id;
  const summary = document.getElementById("summary");
  const epochs = run.planned_epochs ? `${run.epochs}/${run.planned_epochs}` : run.epochs;
  summary.replaceChildren(statusBadge(run.status), ` ${run.kind} · preset ${run.preset ?? "–"} · ${run.model ?? "–"} · ` +
    `${run.optimizer ?? "–"} lr ${num(run.lr)} · batch ${num(run.batch_size)} · ${run.precision ?? "–"} · ` +
    `${epochs} epochs · final test ${pct(run.final_test_acc)}` +
    (run.final_val_acc !== null ? ` · final val ${pct(run.final_val_acc)}` : "") + ` · ${duration(run.seconds)}`);
  const draw = document.getElementById("draw");
  draw.hidden = !run.has_model;
  draw.href = "/draw?run=" + encodeURIComponent(run.id);
  document.getElementById("problems").replaceChildren(...run.problems.map((p) => h("p", { class: "error" }, p)));
  document.getElementById("curves").replaceChildren(
    lineChart("loss", "loss", splitSeries(run.metrics, "loss")),
    lineChart("accuracy", "accuracy (%)", splitSeries(run.metrics, "acc")),
  );
  document.getElementById("config").replaceChildren(run.config ? keyValueTable(run.config, "config-table") : "–");
  document.getElementById("env").replaceChildren(run.env ? keyValueTable(run.env, "env-table") : "–");
  const columns = METRIC_COLUMNS.filter((c) => run.metrics.some((r) => c in r));
  document.getElementById("metrics").replaceChildren(h("table", { class: "data" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: "num" }, c)))),
    h("tbody", {}, run.metrics.map((r) => h("tr", {}, columns.map((c) => h("td", { class: "num" },
      c.endsWith("_acc") ? pct(r[c]) : num(r[c]))))))));
  document.getElementById("files").textContent = "files: " + run.files.join(", ");
}

function renderEvaluation(ev) {
  const head = h("tr", {}, h("th", { class: "corner" }, "true ↓ / predicted →"), ev.classes.map((c) => h("th", {}, c)),
    h("th", {}, "accuracy"));
  const rows = ev.confusion.map((row, t) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    return h("tr", {}, h("th", {}, ev.classes[t]), row.map((n, p) => {
      const share = n / total;
      const shade = t === p ? `rgba(47,111,222,${Math.sqrt(share).toFixed(3)})` : `rgba(208,53,63,${Math.min(1, 4 * Math.sqrt(share)).toFixed(3)})`;
      const cell = h("button", { type: "button", class: "cell" + (t === p ? " diag" : "") + (share > 0.45 ? " dark" : ""),
        dataset: { true: t, pred: p, count: n }, style: n ? `background:${shade}` : "", disabled: n === 0,
        title: `true ${ev.classes[t]}, predicted ${ev.classes[p]}: ${n} image(s)` }, n ? String(n) : "·");
      cell.addEventListener("click", () => showCell(t, p, ev.classes));
      return h("td", {}, cell);
    }), h("td", { class: "num" }, pct(ev.per_class[t].accuracy)));
  });
  const matrix = h("table", { id: "confusion", class: "confusion" }, h("thead", {}, head), h("tbody", {}, rows));
  const perClass = h("div", { class: "per-class", id: "per-class" }, h("h3", {}, "Per-class accuracy"),
    ev.per_class.map((c) => h("div", { class: "pc-row" }, h("span", { class: "pc-label" }, c.class),
      h("span", { class: "pc-track" }, h("span", { class: "pc-fill", style: `width:${c.accuracy}%` })),
      h("span", { class: "pc-value" }, pct(c.accuracy) + " of " + c.images))));
  document.getElementById("evaluation").replaceChildren(
    h("div", {}, h("p", { class: "muted" }, `${ev.model}: ${pct(ev.accuracy)} of ${ev.images.toLocaleString("en")} test images ` +
      `(${(ev.images - ev.correct).toLocaleString("en")} wrong). Click a cell to see its images.`), matrix),
    perClass);
  document.getElementById("mistakes").replaceChildren(...(ev.mistakes.length ? ev.mistakes.map(thumb) : ["no mistakes"]));
}

async function showCell(t, p, classes) {
  const box = document.getElementById("cell");
  for (const b of document.querySelectorAll("#confusion .cell.selected")) b.classList.remove("selected");
  document.querySelector(`#confusion .cell[data-true="${t}"][data-pred="${p}"]`).classList.add("selected");
  box.replaceChildren(h("p", { class: "muted" }, "loading…"));
  try {
    const cell = await getJSON(`${API}/images?true=${t}&pred=${p}`);
    const what = t === p ? `${classes[t]} predicted correctly` : `true ${classes[t]} predicted as ${classes[p]}`;
    box.replaceChildren(h("h3", {}, `${what}: ${cell.count} image${cell.count === 1 ? "" : "s"} (${cell.order})`),
      h("div", { class: "thumbs", id: "cell-thumbs", dataset: { count: cell.count } }, cell.images.map(thumb)));
  } catch (err) {
    showError(box, err);
  }
}

async function loadDetail() {
  const run = await getJSON(API);
  if (run.updated !== shownUpdate) {
    shownUpdate = run.updated;
    renderDetail(run);
  }
  return run;
}

async function main() {
  let run;
  try {
    run = await loadDetail();
  } catch (err) {
    document.getElementById("summary").textContent = err.message;
    document.getElementById("evaluation").replaceChildren();
    return;
  }
  if (run.status === "training") {
    const timer = setInterval(async () => {
      try {
        if ((await loadDetail()).status !== "training") clearInterval(timer);
      } catch (err) { clearInterval(timer); }
    }, 5000);
  }
  const evaluation = document.getElementById("evaluation");
  if (!run.has_model) {
    evaluation.replaceChildren(h("p", { class: "muted" }, "no saved model yet (model.safetensors is written when training ends)"));
    document.getElementById("mistakes").replaceChildren(h("p", { class: "muted" }, "–"));
    return;
  }
  try {
    renderEvaluation(await getJSON(API + "/confusion"));
  } catch (err) {
    showError(evaluation, err);
  }
}

main();
