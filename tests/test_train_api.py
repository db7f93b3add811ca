"""Watch it learn, through its API: `/api/train` on `mnistlab serve --runs DIR` starts `mnistlab train --live` in
its own process. The fast tests check the refusals (TestClient, nothing trains); the slow ones start a real
server, train real tiny runs, stream their events, cancel, resume, and compare the run directories with
`mnistlab train`'s."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from mnistlab.files.runs import read_metrics
from mnistlab.serve import create_app
from mnistlab.serve.loadtest import running_server
from mnistlab.serve.train_jobs import read_events, tail

TIMING = {"seconds", "eval_seconds", "images_per_s"}
QUICK = {"preset": "notebook", "optimizer": "adam", "lr": 0.001, "batch_size": 32, "epochs": 2, "seed": 5,
         "subset": 1200, "test_subset": 200, "double_softmax": False}
FLAGS = ["--preset", "notebook", "--optimizer", "adam", "--lr", "0.001", "--batch-size", "32", "--epochs", "2",
         "--seed", "5", "--subset", "1200", "--test-subset", "200"]


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(None, runs_dir=tmp_path, train=True)) as c:
        yield c


@pytest.mark.parametrize("field, value", [
    ("preset", "nope"), ("optimizer", "rmsprop"), ("lr", 0), ("lr", "0.1"), ("lr", 100), ("batch_size", 0),
    ("batch_size", 4097), ("batch_size", 32.5), ("epochs", 0), ("epochs", 21), ("epochs", True), ("seed", -1),
    ("subset", 10), ("subset", 70000), ("test_subset", 5), ("double_softmax", "yes"), ("compare", 1),
    ("colour", "red"),
])
def test_each_bad_field_is_a_422_naming_it(client, tmp_path, field, value):
    r = client.post("/api/train", json={**QUICK, field: value})
    assert r.status_code == 422
    assert r.json()["detail"].startswith(f"{field}: ")
    assert list(tmp_path.iterdir()) == []  # nothing started
    assert client.get("/api/health").status_code == 200  # the server stays up


def test_a_body_that_is_not_an_object_is_a_422(client):
    json_type = {"content-type": "application/json"}
    assert client.post("/api/train", content=b"[1, 2]", headers=json_type).json()["detail"].startswith("body: ")
    assert client.post("/api/train", content=b"{nope", headers=json_type).json()["detail"] == "body: not valid JSON"


def test_another_site_cannot_start_or_cancel_a_run(client, tmp_path):
    # a plain form post (no preflight) and a request from another origin are refused before anything starts
    assert client.post("/api/train", content=json.dumps(QUICK), headers={"content-type": "text/plain"}).status_code \
        == 415
    evil = {"origin": "http://evil.example"}
    assert client.post("/api/train", json=QUICK, headers=evil).status_code == 403
    assert client.post("/api/train/x/cancel", headers=evil).status_code == 403
    assert list(tmp_path.iterdir()) == []


def test_compare_needs_another_optimizer_than_sgd(client):
    r = client.post("/api/train", json={**QUICK, "optimizer": "sgd", "compare": True})
    assert r.status_code == 422 and r.json()["detail"].startswith("compare: ")


def test_no_train_api_without_train(tmp_path):
    with TestClient(create_app(None, runs_dir=tmp_path)) as c:
        assert c.get("/train").status_code == 404
        assert c.post("/api/train", json=QUICK).status_code in (404, 405)


def test_unknown_or_escaping_ids_are_404(client, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")  # a run, but not a live one
    for rid in ("nope", "plain", "../etc", "%2e%2e/x"):
        assert client.get(f"/api/train/{rid}").status_code == 404
        assert client.post(f"/api/train/{rid}/cancel").status_code == 404


def test_the_serve_cli_offers_train_on_loopback_only_unless_allowed(cli, tmp_path):
    code, _, err = cli("serve", "--allow-train", "--port", "1")
    assert code == 2 and "--allow-train needs --runs DIR" in err
    from mnistlab.cli.serve import train_offered

    assert train_offered("127.0.0.1", str(tmp_path), False) and train_offered("::1", str(tmp_path), False)
    assert not train_offered("0.0.0.0", str(tmp_path), False)
    assert train_offered("0.0.0.0", str(tmp_path), True)
    assert not train_offered("127.0.0.1", None, False)


def test_live_watches_one_run(cli, tmp_path):
    code, _, err = cli("train", "--ensemble", "2", "--live", "--out", str(tmp_path / "e"))
    assert code == 2 and "--live watches one run" in err and not (tmp_path / "e").exists()


def test_read_events_leaves_a_line_being_written(tmp_path):
    path = tmp_path / "live.jsonl"
    path.write_text('{"type": "start"}\nnot json\n{"type": "step", "global_step": 5}\n{"type": "st')
    assert read_events(path) == [(1, {"type": "start"}), (3, {"type": "step", "global_step": 5})]
    assert read_events(path, 1) == [(3, {"type": "step", "global_step": 5})]
    assert read_events(tmp_path / "missing.jsonl") == []
    events, offset, line = tail(path, 0, 0)  # a stream's reads: each byte once, the partial line left
    assert [n for n, _ in events] == [1, 3] and (offset, line) == (len(path.read_bytes()) - len('{"type": "st'), 3)
    with open(path, "a") as f:
        f.write('ep", "epoch": 1}\n')
    assert tail(path, offset, line)[0] == [(4, {"type": "step", "epoch": 1})]


# ---------------------------------------------------------------- real runs
def stream(url: str, rid: str, last: int | None = None, until=None,
           timeout: float = 240) -> list[tuple[int | None, dict]]:
    """The events of a run's stream as (id, event), up to its end event (or the first for which `until` is true)."""
    headers = {"Last-Event-ID": str(last)} if last is not None else {}
    out, n = [], None
    with httpx.stream("GET", f"{url}/api/train/{rid}/events", headers=headers, timeout=timeout) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        for line in s.iter_lines():
            if line.startswith("id: "):
                n = int(line[4:])
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                out.append((n, event))
                n = None
                if event["type"] == "end" or (until is not None and until(event)):
                    break
    return out


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def plain_train(out: Path, mnist_dir, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "mnistlab", "train", *FLAGS, "--out", str(out), "--quiet",
                    "--data-dir", str(mnist_dir), *extra], check=True, timeout=300)


@pytest.fixture(scope="module")
def reference(mnist_dir, tmp_path_factory) -> Path:
    """QUICK trained by `mnistlab train` itself, without the observer."""
    out = tmp_path_factory.mktemp("reference") / "run"
    plain_train(out, mnist_dir)
    return out


@pytest.mark.slow
def test_a_run_started_from_the_api_is_mnistlab_train_s_run(tmp_path, mnist_dir, reference):
    runs = tmp_path / "runs"
    runs.mkdir()
    with running_server(runs=runs, data_dir=mnist_dir) as url:
        r = httpx.post(f"{url}/api/train", json=QUICK)
        assert r.status_code == 201
        rid, run_dir = r.json()["id"], Path(r.json()["run_dir"])
        assert run_dir == runs / rid
        second = httpx.post(f"{url}/api/train", json=QUICK)
        assert second.status_code == 409 and rid in second.json()["detail"]
        assert httpx.get(f"{url}/api/train").json()["id"] == rid
        assert httpx.get(f"{url}/api/train/{rid}").json()["state"] in ("queued", "running")
        events = stream(url, rid)
        ids = [n for n, _ in events if n is not None]
        assert ids == sorted(set(ids)) and ids[0] == 1
        kinds = [e["type"] for _, e in events]
        assert kinds[:2] == ["start", "snapshot"] and kinds[-1] == "end" and kinds.count("epoch") == 2
        steps = [e["global_step"] for _, e in events if e["type"] == "step"]
        assert steps == sorted(steps) and steps[-1] == 2 * 38 and len(steps) >= 8
        start = events[0][1]
        assert len(start["panel"]) == 20 and sorted({d["label"] for d in start["panel"]}) == list(range(10))
        snaps = [e for _, e in events if e["type"] == "snapshot"]
        assert snaps[0]["filters"]["values"] != snaps[-1]["filters"]["values"]  # the filters learned
        assert snaps[-1]["probe_acc"] > snaps[0]["probe_acc"]
        assert snaps[0]["maps"]["shape"] == [32, 26, 26]
        end = events[-1][1]
        assert end["state"] == "done" and end["returncode"] == 0
        state = httpx.get(f"{url}/api/train/{rid}").json()
        assert state["state"] == "done" and state["metrics"]["epoch"] == 2 and state["resume"] is None
        assert state["links"]["draw"] == f"/draw?run={rid}" and state["links"]["explorer"] == f"/run?id={rid}"
        assert httpx.get(url + state["links"]["explorer"]).status_code == 200
        assert httpx.get(f"{url}/api/runs/{rid}/model").status_code == 200  # the draw page's model
        # a reconnection with Last-Event-ID gets what follows, with the same ids
        again = stream(url, rid, last=ids[3])
        assert [n for n, _ in again if n is not None] == ids[4:]
    # the observer changed no number: the same rows and settings as `mnistlab train`
    assert rows(run_dir) == rows(reference)
    assert json.loads((run_dir / "config.json").read_text()) == json.loads((reference / "config.json").read_text())


@pytest.mark.slow
def test_cancel_then_resume_and_a_restarted_server(tmp_path, mnist_dir, reference):
    runs = tmp_path / "runs"
    runs.mkdir()
    with running_server(runs=runs, data_dir=mnist_dir) as url:
        rid = httpx.post(f"{url}/api/train", json=QUICK).json()["id"]
        before = stream(url, rid, until=lambda e: e["type"] == "epoch")
        r = httpx.post(f"{url}/api/train/{rid}/cancel")
        assert r.status_code == 202
        rest = stream(url, rid, last=before[-1][0])
        assert rest[-1][1]["state"] == "cancelled"
        assert rest[-1][1]["resume"] == f"mnistlab train --resume {runs / rid}"
        state = httpx.get(f"{url}/api/train/{rid}").json()
        assert state["state"] == "cancelled" and state["resume"].endswith(str(runs / rid))
        assert httpx.post(f"{url}/api/train/{rid}/cancel").status_code == 409
        assert httpx.get(f"{url}/api/runs/{rid}").json()["status"] == "cancelled"  # the explorer says so too
    run_dir = runs / rid
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]  # epoch 2 was partial
    # `mnistlab train --resume` continues it, to the numbers of a run never cancelled
    subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume", str(run_dir), "--quiet",
                    "--data-dir", str(mnist_dir)], check=True, timeout=300)
    assert rows(run_dir) == rows(reference)

    # a server stopped mid-run: its run stops, and the next server shows it interrupted with its resume command
    with running_server(runs=runs, data_dir=mnist_dir) as url:
        rid = httpx.post(f"{url}/api/train", json={**QUICK, "epochs": 5}).json()["id"]
        stream(url, rid, until=lambda e: e["type"] == "step")
    # leaving the block stops the server (SIGTERM)
    with running_server(runs=runs, data_dir=mnist_dir) as url:
        state = httpx.get(f"{url}/api/train/{rid}").json()
        assert state["state"] == "interrupted"
        assert state["resume"] == f"mnistlab train --resume {runs / rid}"
        assert stream(url, rid)[-1][1]["state"] == "interrupted"


@pytest.mark.slow
def test_compare_with_sgd_trains_the_pair_from_the_same_start(tmp_path, mnist_dir):
    runs = tmp_path / "runs"
    runs.mkdir()
    with running_server(runs=runs, data_dir=mnist_dir) as url:
        body = {**QUICK, "epochs": 1, "subset": 600, "compare": True}
        r = httpx.post(f"{url}/api/train", json=body).json()
        first, second = r["id"], r["then"]["id"]
        assert first.startswith("compare-") and first.endswith("/adam") and second.endswith("/sgd-momentum")
        assert httpx.get(f"{url}/api/train/{second}").json()["state"] == "queued"
        a, b = stream(url, first), stream(url, second)
        assert a[-1][1]["state"] == b[-1][1]["state"] == "done"
        assert a[0][1]["optimizer"] == "Adam" and b[0][1]["optimizer"] == "SGD"
        assert a[0][1]["initial_weights"] == b[0][1]["initial_weights"]  # the same start
        assert httpx.get(f"{url}/api/runs").json()["runs"][0]["kind"] == "compare"
    cfg = json.loads((runs / second / "config.json").read_text())
    assert cfg["opt_args"] == {"lr": 0.01, "momentum": 0.9} and cfg["seed"] == QUICK["seed"]


def test_the_observer_changes_no_number_even_snapshotting_every_step(tmp_path, mnist_dir):
    """pytorch-example has dropout (random numbers in every training step): snapshots at every step, in eval
    mode with the generators forked, leave its metrics rows exactly as without them."""
    from mnistlab.presets import resolve
    from mnistlab.training.live import LIVE_FILE, LiveObserver
    from mnistlab.training.run import train

    common = dict(epochs=2, subset=160, test_subset=100, batch_size=32, seed=3, device="cpu", amp="off",
                  data_dir=mnist_dir, quiet=True, tensorboard=False)
    cfg = resolve("pytorch-example", **{k: v for k, v in common.items() if k not in ("data_dir", "quiet")})
    watched = tmp_path / "watched"
    observer = LiveObserver(lambda: watched, cfg, mnist_dir, every=1, interval=0.0)
    train("pytorch-example", out=watched, callbacks=[observer], **common)
    train("pytorch-example", out=tmp_path / "plain", **common)
    assert rows(watched) == rows(tmp_path / "plain")
    events = [e for _, e in read_events(watched / LIVE_FILE)]
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["start", "snapshot"] and kinds.count("step") == 10 and kinds.count("snapshot") >= 11
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1, 2]
    assert len(events[0]["initial_weights"]) == 64
    assert events[1]["maps"]["shape"] == [32, 26, 26] and events[1]["filters"]["shape"] == [32, 3, 3]
