// The draw page's "why?": the attribution of the shown image (POST .../explain, the same image the prediction
// was asked for) laid over "what the model saw", for the predicted class or a class the user clicks.
// Hidden when the server has no Captum (GET .../explain says so). Uses API and shownRequest from app.js.
"use strict";

(function () {
  const box = document.getElementById("why");
  const toggle = document.getElementById("why-toggle");
  const methodSel = document.getElementById("why-method");
  const panel = document.getElementById("why-panel");
  const overlay = document.getElementById("why-overlay");
  const classesEl = document.getElementById("why-classes");
  const caption = document.getElementById("why-caption");
  let current = null; // the shown result
  let chosen = null; // the class clicked; null: the predicted class
  let asked = 0; // id of the latest explain request; older answers are dropped
  const buttons = [];

  function setBusy(busy) {
    document.body.dataset.whyBusy = busy ? "true" : "false";
  }

  function hideOverlay() {
    overlay.hidden = true;
    overlay.removeAttribute("src");
    delete overlay.dataset.target;
  }

  function mark() {
    const target = chosen ?? (current && !current.blank ? current.prediction : null);
    for (const b of buttons) {
      const v = b.dataset.target === "auto" ? null : Number(b.dataset.target);
      b.classList.toggle("selected", v === chosen);
      b.classList.toggle("target", v !== null && v === target);
    }
  }

  async function explain() {
    mark();
    if (!toggle.checked || !current || current.blank || !shownRequest) {
      hideOverlay();
      caption.textContent = toggle.checked ? "draw a digit (or pick a test image) to see why" : "";
      return;
    }
    const id = ++asked;
    const params = new URLSearchParams({ method: methodSel.value });
    if (chosen !== null) params.set("target", String(chosen));
    setBusy(true);
    try {
      const init = await shownRequest();
      const r = await fetch(API + "/explain?" + params, Object.assign({ method: "POST" }, init));
      const body = await r.json().catch(() => ({ detail: r.statusText }));
      if (id !== asked) return;
      if (!r.ok) {
        hideOverlay();
        caption.textContent = "no explanation: " + (typeof body.detail === "string" ? body.detail : r.status);
        caption.classList.add("error");
        return;
      }
      caption.classList.remove("error");
      overlay.src = body.png;
      overlay.dataset.target = String(body.target);
      overlay.dataset.method = body.method;
      overlay.hidden = false;
      const p = (100 * body.probabilities[body.target]).toFixed(1);
      caption.textContent = body.method_name + " for " + body.target + " (" + p + "%): red pixels speak for " +
        body.target + ", blue against it." + (body.target === body.prediction ? "" : " The model says " + body.prediction + ".");
    } catch (err) {
      if (id === asked) caption.textContent = "explain failed: " + err;
    } finally {
      if (id === asked) setBusy(false);
    }
  }

  function addButton(label, value, title) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.target = value;
    b.title = title;
    b.addEventListener("click", () => {
      chosen = value === "auto" ? null : Number(value);
      explain();
    });
    classesEl.appendChild(b);
    buttons.push(b);
  }

  async function init() {
    let info;
    try {
      const r = await fetch(API + "/explain");
      info = await r.json();
      if (!r.ok || !info.available) return; // no Captum on the server: no toggle
    } catch (err) {
      return;
    }
    for (const [key, name] of Object.entries(info.methods)) {
      methodSel.append(new Option(name, key, key === info.default, key === info.default));
    }
    addButton("predicted", "auto", "explain the predicted class");
    for (let d = 0; d < 10; d++) addButton(String(d), String(d), "explain class " + d);
    box.hidden = false;
    setBusy(false);
    toggle.addEventListener("change", () => {
      panel.hidden = !toggle.checked;
      document.body.classList.toggle("why-on", toggle.checked);
      explain();
    });
    methodSel.addEventListener("change", explain);
    for (const bar of document.querySelectorAll("#bars .bar")) {
      bar.addEventListener("click", () => {
        if (!toggle.checked) return;
        chosen = Number(bar.dataset.digit);
        explain();
      });
    }
    document.getElementById("clear").addEventListener("click", () => { chosen = null; });
    document.addEventListener("mnistlab:result", (e) => {
      current = e.detail;
      explain();
    });
  }

  init();
})();
