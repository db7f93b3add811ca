"""End to end in a real browser: `mnistlab serve` in a subprocess, Debian's Chromium driven by Playwright.

Strokes drawn on the canvas with the mouse must come back as the digit they form. Screenshots are saved in
test-artifacts/ (gitignored).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from mnistlab.data import load_split
from mnistlab.serve.loadtest import running_server

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(trained_run, mnist_dir):
    with running_server(trained_run, data_dir=mnist_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, server, **context_options):
    page = browser.new_context(viewport={"width": 1000, "height": 1100}, **context_options).new_page()
    page.problems = []  # JS errors and requests leaving the server: the page must work offline
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: r.url.startswith(server) or page.problems.append(f"external: {r.url}"))
    page.goto(server)
    expect(page.locator("#gallery .sample")).to_have_count(12)
    return page


@pytest.fixture(scope="module")
def browser_page(browser, server):
    page = open_page(browser, server)
    yield page
    page.context.close()


def draw(page, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw strokes given in canvas pixels (the canvas is 280x280) with the mouse."""
    box = page.locator("#pad").bounding_box()
    sx, sy = box["width"] / 280, box["height"] / 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * sx, box["y"] + y * sy)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * sx, box["y"] + y * sy, steps=3)
        page.mouse.up()


def shown(page) -> str:
    """The digit on the page once the last request has been answered."""
    page.wait_for_function("document.body.dataset.busy === 'false'")
    return page.locator("#prediction").inner_text()


def ink_of_seen(page) -> float:
    """Mean brightness of the 28x28 'what the model saw' canvas."""
    return page.evaluate("""() => {
        const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
        let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i];
        return s / (255 * 784);
    }""")


ONE = [[(150, 45), (145, 100), (140, 160), (136, 235)]]
ZERO = [[(140 + 70 * math.sin(t / 36 * 2 * math.pi), 140 - 100 * math.cos(t / 36 * 2 * math.pi))
         for t in range(38)]]


@pytest.mark.parametrize(("digit", "strokes"), [("1", ONE), ("0", ZERO)])
def test_drawn_digit_is_recognised(browser_page, digit, strokes):
    page = browser_page
    page.click("#clear")
    assert shown(page) == "–" and ink_of_seen(page) == 0.0
    draw(page, strokes)
    expect(page.locator("#prediction")).to_have_text(digit, timeout=15_000)
    assert shown(page) == digit
    assert page.locator(".bar.top").get_attribute("data-digit") == digit
    assert 0.03 < ink_of_seen(page) < 0.5  # the preprocessed 28x28 input is displayed
    assert "%" in page.locator("#confidence").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(300)  # let the bars' transition end before the screenshot
    page.screenshot(path=str(ARTIFACTS / f"serve-drawn-{digit}.png"), full_page=True)
    assert not page.problems


def test_live_prediction_while_drawing(browser_page):
    """Predictions arrive before the pen is lifted (throttled while the pointer moves)."""
    page = browser_page
    page.click("#clear")
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.85, steps=20)
    expect(page.locator("#prediction")).not_to_have_text("–", timeout=15_000)
    page.mouse.up()
    assert shown(page) in "0123456789"


def test_upload_and_gallery(browser_page, mnist_dir, tmp_path):
    page = browser_page
    images, labels = load_split("mnist", "test", mnist_dir)
    path = tmp_path / "digit.png"
    buf = io.BytesIO()
    Image.fromarray(255 - images[0].numpy()).resize((200, 200)).save(buf, format="PNG")  # dark ink on paper
    path.write_bytes(buf.getvalue())
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.getElementById('status').textContent.includes('digit.png')")
    assert shown(page) == str(int(labels[0]))  # a 7 the model gets right

    item = page.locator("#gallery .sample").nth(3)
    assert item.get_attribute("data-label") in "0123456789"
    item.click()
    page.wait_for_function("document.getElementById('status').textContent.startsWith('test image')")
    assert shown(page) == item.get_attribute("data-prediction")  # its probabilities are shown
    assert page.locator(".bar.top").get_attribute("data-digit") == item.get_attribute("data-prediction")
    assert ink_of_seen(page) > 0.03
    assert "parameters" in page.locator("#model-info").inner_text()
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "serve-gallery.png"), full_page=True)
    assert not page.problems


def test_drawing_with_a_finger(browser, server):
    """Touch input (pointer events from a touch screen) draws and predicts like the mouse."""
    page = open_page(browser, server, has_touch=True)
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()
    points = [(box["x"] + box["width"] * 0.52, box["y"] + box["height"] * (0.15 + 0.7 * t / 20)) for t in range(21)]
    start = [{"x": points[0][0], "y": points[0][1]}]
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": start})
    for x, y in points[1:]:
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [{"x": x, "y": y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    expect(page.locator("#prediction")).to_have_text("1", timeout=15_000)
    assert not page.problems
    page.context.close()
