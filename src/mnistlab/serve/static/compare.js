// 2-6 runs side by side: their curves overlaid, their configs with the differing fields highlighted.
"use strict";

const IDS = new URLSearchParams(location.search).getAll("id");

function overlay(runs, title, column, yLabel) {
  const series = runs.map((run, i) => ({
    label: run.id, color: COLORS[i % COLORS.length],
    points: run.metrics.filter((r) => typeof r[column] === "number").map((r) => [r.epoch, r[column]]),
  }));
  return series.some((s) => s.points.length) ? lineChart(title, yLabel, series) : null;
}

function configTable(runs) {
  const flat = runs.map((run) => new Map(flatten(run.config || {})));
  const keys = [...new Set(flat.flatMap((m) => [...m.keys()]))];
  const head = h("tr", {}, h("th", {}, "setting"), runs.map((run, i) =>
    h("th", {}, h("span", { class: "swatch", style: `border-color:${COLORS[i % COLORS.length]}` }), run.id)));
  const rows = keys.map((key) => {
    const values = flat.map((m) => (m.has(key) ? value(m.get(key)) : "–"));
    const differs = new Set(values).size > 1;
    return h("tr", { class: differs ? "differs" : "same", dataset: { key } }, h("th", {}, key),
      values.map((v) => h("td", {}, v)));
  });
  return [h("thead", {}, head), h("tbody", {}, rows)];
}

async function main() {
  const curves = document.getElementById("curves");
  if (IDS.length < 2 || IDS.length > 6) {
    showError(curves, new Error("pick 2 to 6 runs on the runs page to compare them"));
    return;
  }
  let runs;
  try {
    runs = await Promise.all(IDS.map((id) => getJSON(apiRun(id))));
  } catch (err) {
    showError(curves, err);
    return;
  }
  document.title = "mnistlab · compare " + runs.length + " runs";
  document.getElementById("legend").replaceChildren(...runs.map((run, i) => h("li", {},
    h("span", { class: "swatch", style: `border-color:${COLORS[i % COLORS.length]}` }),
    h("a", { href: runPage(run.id) }, run.id), " ", statusBadge(run.status),
    ` final test ${pct(run.final_test_acc)}`)));
  curves.replaceChildren(...[
    overlay(runs, "test accuracy", "test_acc", "accuracy (%)"),
    overlay(runs, "validation accuracy", "val_acc", "accuracy (%)"),
    overlay(runs, "train loss", "train_loss", "loss"),
    overlay(runs, "test loss", "test_loss", "loss"),
  ].filter(Boolean));
  const table = document.getElementById("configs");
  table.replaceChildren(...configTable(runs));
  const onlyDiff = document.getElementById("only-diff");
  onlyDiff.addEventListener("change", () => table.classList.toggle("only-diff", onlyDiff.checked));
}

main();
