"""The runs explorer in a real browser: `mnistlab serve --runs DIR` in a subprocess, Debian's Chromium driven by
Playwright, on a runs directory made by real trainings (conftest's runs_tree). Screenshots go to
test-artifacts/ (gitignored)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
import pytest
import torch
from playwright.sync_api import expect
from test_browser import ARTIFACTS, ONE, browser, draw, shown  # noqa: F401 - browser is a fixture

from mnistlab.inference.predict import load_model
from mnistlab.serve.loadtest import running_server

pytestmark = pytest.mark.slow

RUN_IDS = ["a", "broken-config", "damaged", "sweep-notebook/mlp-e1"]


@pytest.fixture(scope="module")
def server(runs_tree, mnist_dir):
    with running_server(runs=runs_tree, data_dir=mnist_dir) as url:
        yield url


def open_page(browser, server, path):  # noqa: F811 - the fixture's value
    page = browser.new_context(viewport={"width": 1300, "height": 1000}).new_page()
    page.problems = []  # JS errors and requests leaving the server: the pages must work offline
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: r.url.startswith(server) or page.problems.append(f"external: {r.url}"))
    page.goto(server + path)
    return page


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_runs_table_lists_every_run(browser, server):  # noqa: F811
    page = open_page(browser, server, "/runs")
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(len(RUN_IDS))
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.id)")) == RUN_IDS
    assert page.locator('#runs tr[data-id="damaged"]').get_attribute("data-status") == "corrupt"
    assert page.locator('#runs tr[data-id="a"] .badge').inner_text() == "done"
    page.fill("#filter", "sweep")
    expect(rows).to_have_count(1)
    page.fill("#filter", "")
    page.click('#runs th[data-key="final_test_acc"]')  # sorted, best first; runs without a number last
    ids = rows.evaluate_all("rs => rs.map(r => r.dataset.id)")
    accs = {r["id"]: r["final_test_acc"] for r in httpx.get(server + "/api/runs").json()["runs"]}
    scored = sorted((i for i in ids if accs[i] is not None), key=lambda i: -accs[i])
    assert ids[: len(scored)] == scored and len(scored) == 3  # broken-config, with no number, last
    screenshot(page, "runs-table.png")
    assert not page.problems
    page.context.close()


def test_a_confusion_cell_shows_exactly_its_images(browser, server):  # noqa: F811
    page = open_page(browser, server, "/run?id=a")
    expect(page.locator("#confusion .cell")).to_have_count(100, timeout=120_000)  # evaluated on 10,000 images
    cm = httpx.get(server + "/api/runs/a/confusion", timeout=120).json()["confusion"]
    t, p = max(((t, p) for t in range(10) for p in range(10) if t != p), key=lambda c: cm[c[0]][c[1]])
    for true, pred in ((t, p), (3, 3)):
        cell = page.locator(f'#confusion .cell[data-true="{true}"][data-pred="{pred}"]')
        assert int(cell.inner_text()) == cm[true][pred] > 0
        cell.click()
        expect(page.locator("#cell-thumbs figure.thumb")).to_have_count(cm[true][pred], timeout=30_000)
        assert page.locator("#cell-thumbs").get_attribute("data-count") == str(cm[true][pred])
    expect(page.locator("#mistakes figure.thumb.wrong")).to_have_count(24)
    expect(page.locator("#curves svg polyline.series")).to_have_count(6)  # loss and accuracy: train, val, test
    assert page.locator("#config-table").inner_text().count("notebook") >= 2
    screenshot(page, "runs-run.png")
    assert not page.problems
    page.context.close()


def test_compare_overlays_the_selected_runs(browser, server):  # noqa: F811
    page = open_page(browser, server, "/runs")
    expect(page.locator("#runs tbody tr")).to_have_count(len(RUN_IDS))
    for run in ("a", "sweep-notebook/mlp-e1"):
        page.locator(f'#runs tr[data-id="{run}"] input[type=checkbox]').check()
    page.click("#compare")
    page.wait_for_url("**/compare?*")
    charts = page.locator("#curves figure.chart")
    expect(charts).to_have_count(4)  # test accuracy, validation accuracy (run a), train loss, test loss
    for i in (0, 2, 3):
        assert charts.nth(i).locator("polyline.series").count() == 2  # one curve per run
    assert charts.nth(1).locator("polyline.series").count() == 1  # only run a held out a validation split
    differs = page.locator("#configs tr.differs").evaluate_all("rs => rs.map(r => r.dataset.key)")
    assert {"model", "epochs", "val"} <= set(differs) and "optimizer" not in differs
    assert page.locator('#configs tr.same[data-key="optimizer"]').count() == 1
    page.check("#only-diff")
    assert not page.locator('#configs tr[data-key="optimizer"]').is_visible()
    screenshot(page, "runs-compare.png")
    assert not page.problems
    page.context.close()


def test_the_draw_page_opened_from_a_run_predicts_with_its_model(browser, server, runs_tree):  # noqa: F811
    run = "sweep-notebook/mlp-e1"
    page = open_page(browser, server, "/run?id=" + quote(run, safe=""))
    expect(page.locator("#draw")).to_be_visible()
    page.click("#draw")
    page.wait_for_url("**/draw?run=*")
    loaded = load_model(runs_tree / run)
    expect(page.locator("#model-info")).to_contain_text(f"run {run} · model mlp")
    assert f"{loaded.params:,} parameters" in page.locator("#model-info").inner_text()
    expect(page.locator("#gallery .sample")).to_have_count(12)
    answers = []
    page.on("response", lambda r: r.url.endswith(f"/api/runs/{run}/predict") and answers.append(r))
    draw(page, ONE)
    digit = shown(page)
    body = answers[-1].json()  # the answer on display
    assert digit == str(body["prediction"])
    expected = loaded.probabilities(torch.tensor(body["input"]).unsqueeze(0))[0]  # input rounded to 1e-3
    assert body["probabilities"] == pytest.approx(expected.tolist(), abs=2e-3)  # this run's model, not another
    screenshot(page, "runs-draw.png")
    assert not page.problems
    page.context.close()


def test_runs_table_updates_while_a_run_trains(browser, server, runs_tree):  # noqa: F811
    """A run appearing and gaining epochs shows up without reloading the page (the table polls)."""
    page = open_page(browser, server, "/runs")
    expect(page.locator("#runs tbody tr")).to_have_count(len(RUN_IDS))
    live = runs_tree / "live"
    try:
        live.mkdir()
        (live / "config.json").write_text(json.dumps({"preset": "notebook", "epochs": 3}))
        row = page.locator('#runs tr[data-id="live"]')
        expect(row).to_have_count(1, timeout=15_000)
        expect(row.locator(".badge")).to_have_text("training")
        (live / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 91.25}) + "\n")
        expect(row).to_contain_text("91.25%", timeout=15_000)
        expect(row).to_contain_text("1/3")
    finally:
        for f in live.iterdir():
            f.unlink()
        live.rmdir()
    assert not page.problems
    page.context.close()


def test_serve_with_a_model_and_runs_links_both(runs_tree, mnist_dir):
    with running_server(runs_tree / "a", runs=runs_tree, data_dir=mnist_dir) as url:
        assert httpx.get(url + "/api/model").json()["name"] == "notebook"
        assert len(httpx.get(url + "/api/runs").json()["runs"]) == len(RUN_IDS)
        assert httpx.get(url + "/api/health").json()["runs"] == Path(runs_tree).name


@pytest.mark.parametrize("path", ["/api/runs/../../../../etc/passwd", "/api/runs/a/../../..", "/api/runs/./a",
                                  "/api/runs/a/../../outside/confusion"])
def test_raw_dot_segments_sent_as_is_are_404(server, path):
    """Sent without the normalisation browsers and httpx apply, as a hand-made client could."""
    where = urlsplit(server)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 404 and b"root:" not in response.read()
    conn.close()
