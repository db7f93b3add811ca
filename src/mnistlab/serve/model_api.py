"""The draw-a-digit JSON API around one loaded model: POST predict, GET model and samples.

`model_router(provide)` registers the three endpoints on a router; `provide` is a FastAPI dependency giving
the model they answer for, so the same code serves the model chosen at start-up (under /api) and any run's
model in the runs explorer (under /api/runs/{id}).

Uploads go through `preprocess.decode_image` + `to_mnist` and pixels through `from_pixels`: the same code as
`mnistlab predict`. Bad input is a 413 (over `max_upload` bytes), 415 (another content type) or 422 (not an
image, bad JSON, wrong shape) with a one-line `detail`, never a 500. Requests run concurrently in the thread
pool (inference under no_grad shares the read-only weights).
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from mnistlab.data import load_split
from mnistlab.data.preprocess import decode_image, from_pixels, to_mnist
from mnistlab.errors import MnistlabError
from mnistlab.inference.predict import LoadedModel, classify_tensors

MAX_UPLOAD = 2 * 1024 * 1024  # bytes of image per upload; larger -> 413
FORM_SLACK = 64 * 1024  # room for the multipart boundaries and part headers around the file
MAX_SAMPLES = 100
STATIC = Path(__file__).with_name("static")


class Prediction(BaseModel):
    prediction: int | None = Field(description="the most probable digit; null when the image is blank")
    probabilities: list[float] = Field(description="10 class probabilities")
    blank: bool = Field(description="no ink found: nothing to classify")
    top_k: list[tuple[int, float]] = Field(description="[[digit, probability], ...] most probable first")
    source: str = Field(description="the uploaded file's name, or 'pixels'")
    input: list[list[float]] = Field(description="the 28x28 image the model saw, values in [0, 1]")


class ModelInfo(BaseModel):
    name: str
    preset: str | None
    params: int
    test_acc: float | None
    dataset: str
    normalise: list[float] | None
    file: str
    format: str


class Sample(BaseModel):
    index: int
    label: int
    prediction: int
    confidence: float
    probabilities: list[float]
    pixels: list[list[float]] = Field(description="the 28x28 test image, values in [0, 1], as the model saw it")


class Samples(BaseModel):
    dataset: str
    samples: list[Sample]


class PixelsBody(BaseModel):
    pixels: list[list[float]] = Field(description="28x28 numbers in [0, 1], either polarity")


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}},
            },
            "application/json": {"schema": PixelsBody.model_json_schema()},
        },
    }
}


def grid(image: torch.Tensor | np.ndarray, decimals: int = 3) -> list[list[float]]:
    """A 28x28 image as nested lists of floats, rounded for a compact JSON answer."""
    return np.round(np.asarray(image, dtype=np.float64), decimals).tolist()


class Gallery:
    """The test split of the model's dataset, loaded once on first use, and predictions on random samples."""

    def __init__(self, loaded: LoadedModel, data_dir: str | Path | None) -> None:
        self.loaded, self.data_dir = loaded, data_dir
        self._split: tuple[torch.Tensor, torch.Tensor] | None = None
        self._lock = threading.Lock()

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        with self._lock:
            if self._split is None:
                self._split = load_split(self.loaded.dataset, "test", self.data_dir)
            return self._split

    def sample(self, n: int, seed: int | None) -> list[dict[str, Any]]:
        images, labels = self.split()
        idx = random.Random(seed).sample(range(len(labels)), min(n, len(labels)))
        x = images[idx].float() / 255.0
        probs = self.loaded.probabilities(x)
        return [
            {"index": i, "label": int(labels[i]), "prediction": int(p.argmax()), "confidence": float(p.max()),
             "probabilities": [round(float(v), 6) for v in p], "pixels": grid(img, 4)}
            for i, img, p in zip(idx, x, probs, strict=True)
        ]


def classify(loaded: LoadedModel, image: torch.Tensor, blank: bool, source: str) -> dict[str, Any]:
    """The /api/predict answer for one preprocessed (28, 28) image: `mnistlab predict`'s, plus what it saw."""
    result = classify_tensors(loaded, [image], [source], [blank])[0]
    result["source"], result["input"] = source, grid(image)
    return result


def refuse(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise refuse(413, f"request too large ({int(declared):,} bytes); uploads are limited to "
                           f"{limit - FORM_SLACK:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refuse(413, f"request too large; uploads are limited to {limit - FORM_SLACK:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(request: Request, body: bytes, max_upload: int) -> tuple[bytes, str, dict[str, str]]:
    """(file bytes, filename, the other text fields) of a multipart body whose file field is `file`."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=10).parse()
    except MultiPartException as e:
        raise refuse(422, f"bad multipart body: {e.message}") from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise refuse(422, "multipart body has no file field named 'file'")
        data = await file.read()
        name = file.filename or "upload"
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
    finally:
        await form.close()
    if len(data) > max_upload:
        raise refuse(413, f"{name}: {len(data):,} bytes; uploads are limited to {max_upload:,} bytes")
    return data, name, fields


def json_pixels(body: bytes) -> Any:
    """The `pixels` member of a JSON body, type-checked (shape and range are from_pixels' job)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise refuse(422, "request body is not valid JSON") from None
    if not isinstance(obj, dict) or "pixels" not in obj:
        raise refuse(422, 'expected a JSON object {"pixels": 28x28 numbers in [0, 1]}')
    pixels = obj["pixels"]
    rows = pixels if isinstance(pixels, list) else [pixels]
    for row in rows:
        for v in row if isinstance(row, list) else [row]:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise refuse(422, "pixels: must be a 28x28 array of numbers")
    return pixels


@dataclass
class Served:
    """A model as the API serves it: the loaded model and its gallery of test images."""

    loaded: LoadedModel
    gallery: Gallery

    @classmethod
    def of(cls, loaded: LoadedModel, data_dir: str | Path | None) -> Served:
        return cls(loaded, Gallery(loaded, data_dir))


def model_info(loaded: LoadedModel) -> dict[str, Any]:
    norm = loaded.normalise
    return {
        "name": loaded.name, "preset": loaded.preset, "params": int(loaded.params),
        "test_acc": loaded.test_acc, "dataset": loaded.dataset,
        "normalise": None if norm is None else [float(v) for v in norm],
        "file": loaded.path.name, "format": loaded.format,
    }


def model_router(provide: Callable[..., Served], max_upload: int = MAX_UPLOAD) -> APIRouter:
    """GET model, GET samples, POST predict for the model `provide` (a FastAPI dependency) returns."""
    router = APIRouter()
    served_model = Depends(provide)

    @router.get("/model", response_model=ModelInfo)
    def model(served: Served = served_model) -> dict[str, Any]:
        """Name, preset, parameter count and test accuracy of the model."""
        return model_info(served.loaded)

    @router.get("/samples", response_model=Samples)
    def samples(n: int = Query(12, ge=1, le=MAX_SAMPLES), seed: int | None = None,
                served: Served = served_model) -> dict[str, Any]:
        """Random test images with their labels and the model's predictions (the gallery)."""
        try:
            return {"dataset": served.loaded.dataset, "samples": served.gallery.sample(n, seed)}
        except MnistlabError as e:
            raise refuse(503, f"test images unavailable: {e}") from None

    @router.post("/predict", response_model=Prediction, openapi_extra=_PREDICT_BODY)
    async def predict(request: Request, served: Served = served_model) -> dict[str, Any]:
        """Classify an uploaded PNG/JPEG (multipart field `file`) or a JSON 28x28 `pixels` grid."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("multipart/form-data", "application/json"):
            raise refuse(415, f"unsupported content type {ctype or 'none'!r}; send multipart/form-data with "
                               "a 'file' field, or application/json {\"pixels\": ...}")
        body = await read_body(request, max_upload + FORM_SLACK)
        try:
            if ctype == "multipart/form-data":
                data, source, _ = await read_form(request, body, max_upload)
                image, blank = await run_in_threadpool(lambda: to_mnist(decode_image(data, source)))
            else:
                source = "pixels"
                image, blank = from_pixels(json_pixels(body))
        except MnistlabError as e:
            raise refuse(422, str(e)) from None
        return await run_in_threadpool(classify, served.loaded, image, blank, source)

    return router
