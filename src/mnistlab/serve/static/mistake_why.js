// The run page: a click on a test image's thumbnail (the most confident mistakes, or a confusion cell's images)
// shows why the run's model answered what it did: Integrated Gradients over the image for the predicted class
// and, for a mistake, for the true class, side by side (POST .../explain with the test image's index).
// Nothing happens when the server has no Captum. Uses API and h() from run.js and explorer.js.
"use strict";

(function () {
  let asked = 0;

  function view(body, png, title) {
    return h("figure", { class: "why-view", dataset: { target: body.target } },
      h("div", { class: "seen-wrap" }, h("img", { src: png, alt: "test image " + body.source, width: 140, height: 140 }),
        h("img", { class: "heat", src: body.png, alt: "attribution for " + body.target, width: 140, height: 140 })),
      h("figcaption", {}, title, h("br"), (100 * body.probabilities[body.target]).toFixed(1) + "%"));
  }

  async function post(index, target) {
    const r = await fetch(API + "/explain", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(target === null ? { index, method: "ig" } : { index, method: "ig", target }) });
    const body = await r.json().catch(() => ({ detail: r.statusText }));
    if (!r.ok) throw new Error(typeof body.detail === "string" ? body.detail : r.status + " " + r.statusText);
    return body;
  }

  async function show(thumb, panel) {
    const id = ++asked;
    const index = Number(thumb.dataset.index);
    const png = thumb.querySelector("img").src;
    for (const t of document.querySelectorAll("figure.thumb.explained")) t.classList.remove("explained");
    thumb.classList.add("explained");
    panel.replaceChildren(h("p", { class: "muted" }, "explaining test image #" + index + "…"));
    try {
      const pred = await post(index, null);
      const views = [view(pred, png, "why " + pred.prediction + " (predicted)")];
      if (pred.label !== null && pred.label !== pred.prediction) {
        const truth = await post(index, pred.label);
        views.push(view(truth, png, "why " + pred.label + " (true class)"));
      }
      if (id !== asked) return;
      panel.replaceChildren(...views, h("p", { class: "muted" },
        `Test image #${index}, ${pred.method_name}: red pixels speak for the class above, blue against it.`));
      panel.dataset.index = String(index);
    } catch (err) {
      if (id === asked) panel.replaceChildren(h("p", { class: "error" }, "no explanation: " + err.message));
    }
  }

  async function init() {
    try {
      const info = await getJSON(API + "/explain");
      if (!info.available) return;
    } catch (err) {
      return;
    }
    document.body.classList.add("why-ready");
    document.getElementById("mistakes").addEventListener("click", (e) => {
      const thumb = e.target.closest("figure.thumb");
      if (thumb) show(thumb, document.getElementById("mistake-why"));
    });
    const cell = document.getElementById("cell");
    cell.addEventListener("click", (e) => {
      const thumb = e.target.closest("figure.thumb");
      if (!thumb) return;
      let panel = cell.querySelector(".mistake-why");
      if (!panel) panel = cell.appendChild(h("div", { class: "mistake-why", id: "cell-why" }));
      show(thumb, panel);
    });
  }

  init();
})();
