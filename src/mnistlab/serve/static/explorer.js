// mnistlab runs explorer: helpers shared by the runs, run and compare pages. Plain JS and SVG, no dependencies.
"use strict";

const COLORS = ["#2f6fde", "#d0353f", "#1f8a4c", "#b26a00", "#7a3fbf", "#0f8a8a", "#c2185b", "#5d6b00"];
const DASH = { train: "6 4", val: "2 3", test: "" };
const SVG_NS = "http://www.w3.org/2000/svg";

// An element with attributes (class, dataset entries, properties) and children (nodes or text).
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// "/api/runs/<id>" with each path segment of the id escaped.
function apiRun(id) {
  return "/api/runs/" + id.split("/").map(encodeURIComponent).join("/");
}

function runPage(id) {
  return "/run?id=" + encodeURIComponent(id);
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json().catch(() => ({ detail: r.statusText }));
  if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : r.status + " " + r.statusText);
  return body;
}

function pct(v) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(2) + "%";
}

function num(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en");
  return Math.abs(v) >= 1e-3 && Math.abs(v) < 1e5 ? String(+v.toPrecision(digits)) : v.toExponential(2);
}

function duration(seconds) {
  if (!seconds) return "–";
  if (seconds < 90) return seconds.toFixed(1) + " s";
  if (seconds < 5400) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function when(epochSeconds) {
  if (!epochSeconds) return "–";
  const d = new Date(epochSeconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  const day = pad(d.getMonth() + 1) + "-" + pad(d.getDate());
  return (d.getFullYear() === new Date().getFullYear() ? "" : d.getFullYear() + "-") + day + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes());
}

function value(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "object") return JSON.stringify(v);
  return typeof v === "number" ? num(v, 6) : String(v);
}

// A config/env object as [key, value] rows, nested objects flattened to "a.b".
function flatten(obj, prefix = "") {
  const rows = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) rows.push(...flatten(v, prefix + k + "."));
    else rows.push([prefix + k, v]);
  }
  return rows;
}

function keyValueTable(obj, id) {
  return h("table", { class: "kv", id },
    h("tbody", {}, flatten(obj).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, value(v))))));
}

function statusBadge(status) {
  return h("span", { class: "badge status-" + status }, status);
}

// 1, 2, 2.5 or 5 times a power of ten, at least `raw`: a round distance between axis ticks.
function niceStep(raw) {
  const p = 10 ** Math.floor(Math.log10(raw));
  return p * ([1, 2, 2.5, 5, 10].find((f) => f * p >= raw) || 10);
}

// A line chart in SVG. series: [{label, color, dash, points: [[x, y], ...]}]; integer x (epochs).
function lineChart(title, yLabel, series, { width = 460, height = 250 } = {}) {
  const m = { l: 54, r: 12, t: 24, b: 36 };
  const pts = series.flatMap((s) => s.points);
  const box = h("figure", { class: "chart" });
  const el = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  el.append(svg("text", { x: m.l, y: 15, class: "chart-title" }, title));
  box.append(el);
  if (!pts.length) {
    el.append(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "muted-text" }, "no epochs yet"));
    return box;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.05 || 1; y1 += Math.abs(y1) * 0.05 || 1; }
  const pad = (y1 - y0) * 0.06;
  y0 -= pad; y1 += pad;
  const X = (x) => m.l + ((x - x0) / (x1 - x0)) * (width - m.l - m.r);
  const Y = (y) => height - m.b - ((y - y0) / (y1 - y0)) * (height - m.t - m.b);
  const axes = svg("g", { class: "axes" });
  const tick = niceStep((y1 - y0) / 4);
  for (let y = Math.ceil(y0 / tick) * tick; y <= y1; y += tick) {
    axes.append(svg("line", { x1: m.l, x2: width - m.r, y1: Y(y), y2: Y(y), class: "grid" }));
    axes.append(svg("text", { x: m.l - 6, y: Y(y) + 4, "text-anchor": "end" }, num(+y.toPrecision(6), 4)));
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 10));
  for (let x = Math.ceil(x0); x <= x1; x += step) {
    axes.append(svg("text", { x: X(x), y: height - m.b + 16, "text-anchor": "middle" }, String(x)));
  }
  axes.append(svg("text", { x: (m.l + width - m.r) / 2, y: height - 4, "text-anchor": "middle" }, "epoch"));
  axes.append(svg("text", { x: 12, y: (m.t + height - m.b) / 2, transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})`,
    "text-anchor": "middle" }, yLabel));
  el.append(axes);
  const legend = h("figcaption", { class: "legend" });
  for (const s of series) {
    if (!s.points.length) continue;
    const g = svg("g", { class: "series-group" });
    const line = svg("polyline", { class: "series", points: s.points.map(([x, y]) => X(x) + "," + Y(y)).join(" "),
      stroke: s.color, "stroke-dasharray": s.dash || "", fill: "none" });
    line.dataset.label = s.label;
    g.append(line);
    for (const [x, y] of s.points) {
      const dot = svg("circle", { cx: X(x), cy: Y(y), r: 2.6, fill: s.color });
      dot.append(svg("title", {}, `${s.label}, epoch ${x}: ${num(y, 5)}`));
      g.append(dot);
    }
    el.append(g);
    legend.append(h("span", { class: "key" },
      h("span", { class: "swatch" + (s.dash ? " dashed" : ""), style: `border-color:${s.color}` }), s.label));
  }
  box.append(legend);
  return box;
}

// The per-epoch series of one metric ("acc" or "loss") for the splits a run's metrics have.
function splitSeries(metrics, metric, color, labelPrefix = "") {
  return ["train", "val", "test"]
    .map((split) => ({
      label: labelPrefix + split,
      color: color || COLORS[["train", "val", "test"].indexOf(split)],
      dash: DASH[split],
      points: metrics.filter((r) => typeof r[`${split}_${metric}`] === "number").map((r) => [r.epoch, r[`${split}_${metric}`]]),
    }))
    .filter((s) => s.points.length);
}

function showError(container, err) {
  container.replaceChildren(h("p", { class: "error" }, String(err.message || err)));
}
