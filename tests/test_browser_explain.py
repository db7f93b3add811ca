""""why?" in a real browser: `mnistlab serve` in a subprocess, Debian's Chromium driven by Playwright.

The draw page overlays the attribution of the drawn digit with a class selector; the run page explains a
mistake when its thumbnail is clicked. Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from playwright.sync_api import expect
from test_browser import ARTIFACTS, ONE, browser, draw, shown  # noqa: F401 - browser is a fixture

from mnistlab.serve.loadtest import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_server(trained_run, mnist_dir):
    with running_server(trained_run, data_dir=mnist_dir) as url:
        yield url


@pytest.fixture(scope="module")
def runs_server(runs_tree, mnist_dir):
    with running_server(runs=runs_tree, data_dir=mnist_dir) as url:
        yield url


def open_page(browser, server, path="/"):  # noqa: F811 - the fixture's value
    page = browser.new_context(viewport={"width": 1000, "height": 1200}).new_page()
    page.problems = []
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: r.url.startswith(server) or page.problems.append(f"external: {r.url}"))
    page.goto(server + path)
    return page


def explained(page) -> None:
    page.wait_for_function("document.body.dataset.whyBusy === 'false'")


def test_why_overlays_the_drawn_digits_attribution(browser, model_server):  # noqa: F811
    page = open_page(browser, model_server)
    expect(page.locator("#why")).to_be_visible()
    expect(page.locator("#why-panel")).to_be_hidden()
    answers = []
    page.on("response", lambda r: "/api/explain?" in r.url and answers.append(r))
    draw(page, ONE)
    digit = shown(page)
    assert digit == "1" and not answers  # nothing is explained until asked
    page.check("#why-toggle")
    overlay = page.locator("#why-overlay")
    expect(overlay).to_be_visible(timeout=15_000)
    expect(overlay).to_have_attribute("data-target", digit)
    explained(page)
    body = answers[-1].json()
    assert body["target"] == body["prediction"] == 1 and body["method"] == "ig"
    assert overlay.get_attribute("src") == body["png"]
    seen, over = page.locator("#seen").bounding_box(), overlay.bounding_box()
    assert (round(over["width"]), round(over["height"])) == (round(seen["width"]), round(seen["height"])) == (196, 196)
    assert (round(over["x"]), round(over["y"])) == (round(seen["x"]), round(seen["y"]))  # exactly over the image
    classes = page.locator("#why-classes button")
    expect(classes).to_have_count(11)  # "predicted" and 0-9
    page.click('#why-classes button[data-target="7"]')
    expect(overlay).to_have_attribute("data-target", "7")
    explained(page)
    assert "target=7" in answers[-1].url and answers[-1].json()["target"] == 7
    expect(page.locator("#why-caption")).to_contain_text("for 7")
    expect(page.locator('#why-classes button[data-target="7"]')).to_have_class("selected target")
    page.select_option("#why-method", "occlusion")
    expect(overlay).to_have_attribute("data-method", "occlusion")
    page.select_option("#why-method", "ig")
    page.click('#why-classes button[data-target="auto"]')
    expect(overlay).to_have_attribute("data-target", "1")
    explained(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)
    page.locator("main").screenshot(path=str(ARTIFACTS / "why-draw.png"))
    page.click("#clear")
    expect(overlay).to_be_hidden()
    page.uncheck("#why-toggle")
    expect(page.locator("#why-panel")).to_be_hidden()
    assert not page.problems
    page.context.close()


def test_why_is_hidden_without_captum(browser, model_server):  # noqa: F811
    page = browser.new_context().new_page()
    page.route("**/api/explain", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"available": False, "methods": {}, "default": "ig", "install": "x"})))
    page.goto(model_server)
    expect(page.locator("#gallery .sample")).to_have_count(12)
    page.wait_for_timeout(500)
    expect(page.locator("#why")).to_be_hidden()
    page.context.close()


def test_clicking_a_mistake_shows_its_attribution(browser, runs_server):  # noqa: F811
    page = open_page(browser, runs_server, "/run?id=a")
    thumbs = page.locator("#mistakes figure.thumb")
    expect(thumbs.first).to_be_visible(timeout=120_000)
    mistake = httpx.get(runs_server + "/api/runs/a/confusion", timeout=120).json()["mistakes"][0]
    thumbs.first.click()
    views = page.locator("#mistake-why figure.why-view")
    expect(views).to_have_count(2, timeout=15_000)  # predicted and true class side by side
    targets = views.evaluate_all("vs => vs.map(v => Number(v.dataset.target))")
    assert targets == [mistake["prediction"], mistake["label"]]
    expect(page.locator("#mistake-why")).to_have_attribute("data-index", str(mistake["index"]))
    expect(views.first.locator("img.heat")).to_have_attribute("src", re.compile("^data:image/png"))
    expect(thumbs.first).to_have_class(re.compile("explained"))
    page.locator("#mistakes").scroll_into_view_if_needed()
    page.locator("#mistakes").locator("..").screenshot(path=str(ARTIFACTS / "why-mistake.png"))
    assert not page.problems
    page.context.close()
