"""The web app: the draw-a-digit page around a model chosen at start-up, and/or the runs explorer.

    GET  /                 the draw page (static/index.html, app.js, style.css: no CDN, works offline); with
                           only a runs directory, a redirect to /runs
    POST /api/predict      multipart field `file` (PNG/JPEG) or JSON {"pixels": 28x28 numbers in [0, 1]}
    GET  /api/model        name, preset, parameter count, test accuracy
    GET  /api/samples?n=12 random test images with their labels and predictions (the gallery)
    GET/POST /api/explain  attributions: why the model answered what it did (serve/explain_api.py)
    GET  /api/health       liveness
    GET  /runs ...         the runs explorer and its /api/runs APIs (serve/explorer.py), given `runs_dir`
    GET  /train ...        start a run and watch it learn, /api/train (serve/train_api.py), given `train`
    GET  /docs, /openapi.json

The model API is serve/model_api.py, shared with the explorer's per-run draw page. The model is loaded
once by the caller; requests run concurrently in the thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from mnistlab import __version__
from mnistlab.inference.predict import LoadedModel
from mnistlab.serve.explain_api import explain_router
from mnistlab.serve.explorer import Explorer, explorer_router
from mnistlab.serve.model_api import MAX_UPLOAD, Served, model_router
from mnistlab.serve.train_api import train_router
from mnistlab.serve.train_jobs import Trainer

STATIC = Path(__file__).with_name("static")


@contextlib.asynccontextmanager
async def stop_training(app: FastAPI) -> AsyncIterator[None]:
    """At shutdown, the run the server trains stops at its next step and is recorded as interrupted."""
    yield
    trainer = getattr(app.state, "trainer", None)
    if trainer is not None:
        await asyncio.to_thread(trainer.shutdown)


def create_app(loaded_model: LoadedModel | None, *, data_dir: str | Path | None = None,
               max_upload: int = MAX_UPLOAD, runs_dir: str | Path | None = None, train: bool = False) -> FastAPI:
    """The web app around a loaded model (`mnistlab.load(...)`) and/or the runs under `runs_dir`;
    `data_dir` feeds the gallery and the explorer's test images. With `train`, /train starts runs into
    `runs_dir` (the caller decides who may: the CLI allows it on loopback, or with --allow-train)."""
    if loaded_model is None and runs_dir is None:
        raise ValueError("create_app needs a model, a runs directory, or both")
    if train and runs_dir is None:
        raise ValueError("training from the web needs a runs directory to write into")
    app = FastAPI(
        lifespan=stop_training,
        title="mnistlab",
        version=__version__,
        description="Classify handwritten digits with a model trained by mnistlab, and explore training runs.",
    )
    app.state.model = loaded_model
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    served = Served.of(loaded_model, data_dir) if loaded_model is not None else None

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return FileResponse(STATIC / "index.html") if served is not None else RedirectResponse("/runs")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        status = {"status": "ok", "model": loaded_model.name if loaded_model is not None else None}
        return status if runs_dir is None else {**status, "runs": Path(runs_dir).name}

    if served is not None:
        app.include_router(model_router(lambda: served, max_upload), prefix="/api")
        app.include_router(explain_router(lambda: served, max_upload), prefix="/api")
    if runs_dir is not None:
        app.include_router(explorer_router(Explorer(runs_dir, data_dir), max_upload))
    if train:
        app.state.trainer = Trainer(Path(runs_dir).resolve(), data_dir, shown_root=str(runs_dir))
        app.include_router(train_router(app.state.trainer))
    return app
