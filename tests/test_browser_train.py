"""Watch it learn in a real browser: `mnistlab serve --runs DIR` in a subprocess, Debian's Chromium driven by
Playwright, real tiny runs started from the /train form. Screenshots go to test-artifacts/ (gitignored)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import expect
from test_browser import ARTIFACTS, browser  # noqa: F401 - browser is a fixture
from test_browser_runs import open_page

from mnistlab.serve.loadtest import running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(mnist_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("watch-runs")
    with running_server(runs=runs, data_dir=mnist_dir) as url:
        yield url


def open_train(browser, server, path="/train"):  # noqa: F811 - the fixture's value
    return open_page(browser, server, path)


def fill(page, **values) -> None:
    for name, value in values.items():
        page.fill(f"#{name}", str(value))


def points(page) -> int:
    return page.locator("#curves svg circle").count()


def captions(page) -> list[str]:
    return page.locator("#panel figcaption").all_inner_texts()


def test_start_watch_reload_and_end_with_links(browser, server):  # noqa: F811
    page = open_train(browser, server)
    fill(page, subset=4000, test_subset=300, epochs=2, seed=1)
    page.click("#start")
    expect(page.locator("#panel figure")).to_have_count(20)
    expect(page.locator("#panel figure[data-pred]")).to_have_count(20, timeout=60_000)  # the untrained model
    first_filters = page.eval_on_selector("#filters", "c => c.toDataURL()")
    first_captions = captions(page)
    assert page.locator("#panel figure.wrong").count() >= 3  # an untrained model gets several wrong
    page.wait_for_function("() => document.querySelectorAll('#curves svg circle').length >= 4", timeout=60_000)
    n = points(page)
    page.wait_for_function(f"() => document.querySelectorAll('#curves svg circle').length > {n}", timeout=60_000)
    page.wait_for_function(f"() => document.getElementById('filters').toDataURL() !== {first_filters!r}",
                           timeout=60_000)
    page.wait_for_function(
        "(before) => [...document.querySelectorAll('#panel figcaption')].map(c => c.textContent).join() !== before",
        arg=",".join(first_captions), timeout=60_000)
    assert float(page.get_attribute("#progress", "value")) > 0
    assert "images/s" in page.inner_text("#speed")

    rid = parse_qs(urlsplit(page.url).query)["id"][0]  # the address names the run: a reload finds it
    page.reload()
    expect(page.locator("#run-name")).to_have_text(rid)
    expect(page.locator("#panel figure[data-pred]")).to_have_count(20, timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('#curves svg circle').length >= 4", timeout=60_000)

    expect(page.locator("body")).to_have_attribute("data-state", "done", timeout=240_000)
    expect(page.locator("#link-explorer")).to_have_attribute("href", f"/run?id={rid}")
    expect(page.locator("#link-draw")).to_be_visible()
    expect(page.locator("#link-draw")).to_have_attribute("href", f"/draw?run={rid}")
    assert page.locator("#curves svg polyline.series").count() >= 4  # loss, snapshots, train and test epochs
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "train-done.png"), full_page=True)
    page.click("#link-draw")
    expect(page.locator("#gallery .sample")).to_have_count(12, timeout=60_000)  # its model on the draw page
    page.goto(server + f"/run?id={rid}")
    expect(page.locator("#curves svg polyline.series")).to_have_count(4, timeout=30_000)  # the explorer's view
    assert not page.problems
    page.context.close()


def test_cancel_from_the_page(browser, server):  # noqa: F811
    page = open_train(browser, server)
    fill(page, subset=4000, test_subset=300, epochs=5, seed=2)
    page.click("#start")
    expect(page.locator("body")).to_have_attribute("data-state", "running", timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('#curves svg circle').length >= 3", timeout=60_000)
    page.click("#cancel")
    expect(page.locator("body")).to_have_attribute("data-state", "cancelled", timeout=120_000)
    expect(page.locator("#resume-command")).to_contain_text("mnistlab train --resume")
    rid = page.inner_text("#run-name")
    assert httpx.get(f"{server}/api/train/{rid}").json()["state"] == "cancelled"
    assert httpx.get(f"{server}/api/train").json()["id"] is None  # nothing trains: a new run may start
    assert not page.problems
    page.context.close()
