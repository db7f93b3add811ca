// The runs table: every run under the served directory, sortable, filterable, refreshed while runs train.
"use strict";

const POLL_MS = 3000;
const MAX_COMPARE = 6;
const table = document.getElementById("runs");
const tbody = table.querySelector("tbody");
const filterInput = document.getElementById("filter");
const compareButton = document.getElementById("compare");
const countEl = document.getElementById("count");
const selected = new Set();
let runs = [];
let etag = null;
let sortKey = "updated";
let sortDesc = true;

function cells(r) {
  const epochs = r.planned_epochs ? `${r.epochs}/${r.planned_epochs}` : String(r.epochs);
  const status = h("td", {}, statusBadge(r.status));
  if (r.problems.length) status.title = r.problems.join("\n");
  return [
    h("td", {}, h("a", { href: runPage(r.id) }, r.id.split("/").flatMap((part, i) => (i ? ["/", h("wbr"), part] : [part])))),
    h("td", {}, r.kind), status, h("td", {}, r.preset ?? "–"), h("td", {}, r.dataset ?? "–"),
    h("td", { class: "num" }, epochs), h("td", {}, r.optimizer ?? "–"), h("td", { class: "num" }, num(r.lr)),
    h("td", { class: "num" }, num(r.batch_size)), h("td", {}, r.precision ?? "–"),
    h("td", { class: "num" }, pct(r.best_val_acc)), h("td", { class: "num" }, pct(r.final_val_acc)),
    h("td", { class: "num" }, pct(r.best_test_acc)), h("td", { class: "num" }, pct(r.final_test_acc)),
    h("td", { class: "num" }, duration(r.seconds)), h("td", {}, when(r.updated)),
  ];
}

function rowText(r) {
  return [r.id, r.kind, r.status, r.preset, r.dataset, r.optimizer, r.precision, r.model].join(" ").toLowerCase();
}

function compareValues(a, b) {
  const x = a[sortKey], y = b[sortKey];
  if (x === y) return a.id < b.id ? -1 : 1;
  if (x === null || x === undefined) return 1; // missing values last, whichever the direction
  if (y === null || y === undefined) return -1;
  const order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
  return sortDesc ? -order : order;
}

function render() {
  const words = filterInput.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
  const shown = runs.filter((r) => words.every((w) => rowText(r).includes(w))).sort(compareValues);
  tbody.replaceChildren(...shown.map((r) => {
    const box = h("input", { type: "checkbox", checked: selected.has(r.id), "aria-label": "select " + r.id });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(r.id); else selected.delete(r.id);
      updateCompare();
    });
    return h("tr", { dataset: { id: r.id, status: r.status } }, h("td", {}, box), cells(r));
  }));
  for (const th of table.querySelectorAll("th[data-key]")) {
    th.classList.toggle("sorted", th.dataset.key === sortKey);
    th.classList.toggle("desc", th.dataset.key === sortKey && sortDesc);
  }
  countEl.textContent = `${shown.length} of ${runs.length} runs`;
  updateCompare();
}

function updateCompare() {
  for (const id of [...selected]) if (!runs.some((r) => r.id === id)) selected.delete(id);
  const n = selected.size;
  compareButton.disabled = n < 2 || n > MAX_COMPARE;
  compareButton.textContent = n ? `Compare selected (${n})` : "Compare selected";
}

async function refresh() {
  try {
    const r = await fetch("/api/runs", { headers: etag ? { "If-None-Match": etag } : {} });
    if (r.status === 304) return;
    const body = await r.json();
    if (!r.ok) throw new Error(body.detail || r.statusText);
    etag = r.headers.get("ETag");
    runs = body.runs;
    document.getElementById("root").textContent = body.root;
    render();
  } catch (err) {
    countEl.textContent = "could not read the runs: " + err.message;
  }
}

for (const th of table.querySelectorAll("th[data-key]")) {
  th.tabIndex = 0;
  const sort = () => {
    sortDesc = th.dataset.key === sortKey ? !sortDesc : ["updated", "seconds"].includes(th.dataset.key) ||
      th.dataset.key.endsWith("_acc");
    sortKey = th.dataset.key;
    render();
  };
  th.addEventListener("click", sort);
  th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
}
filterInput.addEventListener("input", render);
compareButton.addEventListener("click", () => {
  location.href = "/compare?" + [...selected].map((id) => "id=" + encodeURIComponent(id)).join("&");
});
refresh();
setInterval(refresh, POLL_MS);
