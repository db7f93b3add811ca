"""The runs explorer: pages and JSON APIs over the run directories under one root, read-only.

    GET /runs, /run?id=ID, /compare?id=A&id=B, /draw?run=ID     the pages (static/*.html, no CDN)
    GET /api/runs                          every run's summary row (ETag: poll with If-None-Match)
    GET /api/runs/{id}                     summary, config, env, per-epoch metrics, files
    GET /api/runs/{id}/confusion           the saved model's fp32 evaluation on the test split
    GET /api/runs/{id}/images?true=T&pred=P  every test image of one confusion-matrix cell
    GET /api/runs/{id}/model, /samples; POST /api/runs/{id}/predict   the draw-a-digit API for the run's model
    GET/POST /api/runs/{id}/explain        the run's model's attributions (serve/explain_api.py)

Ids are resolved by `runs.RunsRoot` (inside the root or 404). A run's model is loaded on first use and
kept, with its test-split predictions, until its model.safetensors changes (a few runs at a time).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mnistlab.errors import MnistlabError
from mnistlab.inference.evaluate import SplitPredictions, evaluate_model, predict_split
from mnistlab.inference.predict import load_model
from mnistlab.serve.explain_api import explain_router
from mnistlab.serve.model_api import MAX_UPLOAD, Served, model_router
from mnistlab.serve.run_reader import NotFound, RunsRoot

STATIC = Path(__file__).with_name("static")
CACHED_MODELS = 4  # runs whose model and test predictions are kept in memory


class RunSummary(BaseModel):
    id: str = Field(description="the run directory's path relative to the served root")
    name: str
    kind: str = Field(description="train, sweep, compare, ensemble, tune or lab")
    status: str = Field(description="done, training, interrupted, cancelled (from /train), reused or corrupt")
    problems: list[str] = Field(description="what could not be read, one line each")
    preset: str | None
    model: str | None
    dataset: str | None
    epochs: int = Field(description="epochs with metrics")
    planned_epochs: int | None
    optimizer: str | None
    lr: float | None
    batch_size: int | None
    precision: str | None
    device: str | None
    best_val_acc: float | None
    final_val_acc: float | None
    best_test_acc: float | None
    final_test_acc: float | None
    seconds: float = Field(description="training and evaluation wall time of the epochs")
    updated: float = Field(description="last change to the run's files, seconds since the epoch")
    has_model: bool


class RunList(BaseModel):
    root: str
    runs: list[RunSummary]


class RunDetail(RunSummary):
    config: dict[str, Any] | None
    env: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    files: list[str]


class CellImage(BaseModel):
    index: int = Field(description="index in the test split")
    label: int
    prediction: int
    confidence: float
    png: str = Field(description="the 28x28 image as a data: URL")


class Confusion(BaseModel):
    run: str
    model: str
    split: str
    images: int
    correct: int
    accuracy: float
    classes: list[str]
    confusion: list[list[int]] = Field(description="rows: true class, columns: predicted class")
    per_class: list[dict[str, Any]]
    mistakes: list[CellImage] = Field(description="the most confident wrong predictions")


class Cell(BaseModel):
    run: str
    true: int
    pred: int
    count: int
    order: str
    images: list[CellImage]


@dataclass
class RunModel:
    """A run's loaded model, and its predictions and evaluation on the test split once asked for."""

    stamp: tuple[int, int]
    served: Served
    predictions: SplitPredictions | None = None
    evaluation: dict[str, Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one evaluation at a time


def png_data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Explorer:
    """The runs under `root` with their models, loaded lazily and cached per (run, model file version)."""

    def __init__(self, root: str | Path, data_dir: str | Path | None = None) -> None:
        self.runs = RunsRoot(root)
        self.data_dir = data_dir
        self._models: OrderedDict[str, RunModel] = OrderedDict()
        self._lock = threading.Lock()  # guards _models

    def run(self, run_id: str) -> Path:
        try:
            return self.runs.resolve(run_id)
        except NotFound:
            raise HTTPException(404, f"no run {run_id!r} under the served directory") from None

    def model(self, run_id: str) -> RunModel:
        run = self.run(run_id)
        file = self.runs.file(run, "model.safetensors")
        try:
            st = file.stat() if file is not None else None
        except OSError:  # removed since
            st = None
        if st is None:
            raise HTTPException(409, f"run {run_id!r} has no model.safetensors (yet)")
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            entry = self._models.get(run_id)
            if entry is None or entry.stamp != stamp:
                try:
                    entry = RunModel(stamp, Served.of(load_model(file), self.data_dir))
                except MnistlabError as e:
                    raise HTTPException(409, f"run {run_id!r}: {e}") from None
                self._models[run_id] = entry
            self._models.move_to_end(run_id)
            while len(self._models) > CACHED_MODELS:
                self._models.popitem(last=False)
            return entry

    def evaluated(self, run_id: str) -> RunModel:
        entry = self.model(run_id)
        with entry.lock:
            if entry.evaluation is None:
                loaded = entry.served.loaded
                try:
                    entry.predictions = predict_split(loaded, "test", self.data_dir)
                except MnistlabError as e:
                    raise HTTPException(503, f"test images unavailable: {e}") from None
                entry.evaluation = evaluate_model(loaded, predictions=entry.predictions)
        return entry

    def served(self, run_id: str) -> Served:
        return self.model(run_id).served


def _images(p: SplitPredictions, indices: Any) -> list[dict[str, Any]]:
    return [{"index": int(i), "label": int(p.labels[i]), "prediction": int(p.preds[i]),
             "confidence": round(float(p.confidence[i]), 6), "png": png_data_url(p.images[i].numpy())}
            for i in indices]


def explorer_router(explorer: Explorer, max_upload: int = MAX_UPLOAD) -> APIRouter:
    """The explorer's pages and APIs (mount with `app.include_router`)."""
    router = APIRouter()

    for path, page in (("/runs", "runs.html"), ("/run", "run.html"), ("/compare", "compare.html"),
                       ("/draw", "index.html")):
        router.add_api_route(path, _page(page), include_in_schema=False, methods=["GET"])

    @router.get("/api/runs", response_model=RunList, tags=["runs"])
    def list_runs(request: Request, response: Response) -> Any:
        """Every run directory under the served root (nested ones too). Send the ETag back in If-None-Match
        to get 304 while nothing changed."""
        rows = [explorer.runs.summary(run) for run in explorer.runs.scan()]
        body = {"root": explorer.runs.root.name, "runs": rows}
        etag = '"' + hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest() + '"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        response.headers["ETag"] = etag
        return body

    router.include_router(model_router(explorer.served, max_upload), prefix="/api/runs/{run_id:path}",
                          tags=["runs"])
    router.include_router(explain_router(explorer.served, max_upload), prefix="/api/runs/{run_id:path}",
                          tags=["runs"])

    @router.get("/api/runs/{run_id:path}/confusion", response_model=Confusion, tags=["runs"])
    async def confusion(run_id: str) -> dict[str, Any]:
        """The run's saved model evaluated in fp32 on the whole test split: confusion matrix (rows: true
        class), per-class accuracy and the most confident mistakes."""
        entry = await run_in_threadpool(explorer.evaluated, run_id)
        ev = entry.evaluation
        return {"run": run_id, "model": ev["model"], "split": ev["split"], "images": ev["images"],
                "correct": ev["correct"], "accuracy": ev["accuracy"],
                "classes": [c["class"] for c in ev["per_class"]], "confusion": ev["confusion"],
                "per_class": ev["per_class"],
                "mistakes": _images(entry.predictions, [m["index"] for m in ev["mistakes"]])}

    @router.get("/api/runs/{run_id:path}/images", response_model=Cell, tags=["runs"])
    async def images(run_id: str, true: int = Query(ge=0, le=9, description="true class (matrix row)"),
                     pred: int = Query(ge=0, le=9, description="predicted class (matrix column)")) -> dict[str, Any]:
        """Every test image of one confusion-matrix cell: mistakes most confident first, correct predictions
        least confident first."""
        entry = await run_in_threadpool(explorer.evaluated, run_id)
        p = entry.predictions
        cell = p.cell(true, pred)
        ascending = true == pred
        cell = cell[p.confidence[cell].argsort(descending=not ascending, stable=True)]
        return {"run": run_id, "true": true, "pred": pred, "count": len(cell),
                "order": "least confident first" if ascending else "most confident first",
                "images": await run_in_threadpool(_images, p, cell.tolist())}

    @router.get("/api/runs/{run_id:path}", response_model=RunDetail, tags=["runs"])
    def run_detail(run_id: str) -> dict[str, Any]:
        """One run: its summary row, config.json, env.json, every epoch's metrics and the files present."""
        return explorer.runs.detail(explorer.run(run_id))

    return router


def _page(name: str):
    def page() -> FileResponse:
        return FileResponse(STATIC / name)

    return page
