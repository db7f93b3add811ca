"""Why the model answered what it did, over HTTP: the attribution of one image for one class.

    GET  .../explain    {"available": Captum installed?, "methods": {...}, "default": "ig", "install": ...}
    POST .../explain    the image as .../predict takes it (multipart field `file`, or JSON {"pixels": 28x28}),
                        or JSON {"index": N} for image N of the test split exactly as the model saw it; plus
                        `method` (ig, saliency, occlusion, gradcam; default ig) and `target` (0-9; default the
                        predicted class), as form fields, JSON members or query parameters.

The answer has the heat map as numbers (28x28, in the model's score units) and as a 28x28 RGBA PNG (a data
URL) to lay over the image. Same size and type limits as predict (413, 415, 422 with a one-line detail); an
unknown method, a target outside 0-9, a blank image or Grad-CAM on a model without a convolution are 422;
without Captum, 503 naming the extra to install. `explain_router(provide)` is mounted beside the model API, at
/api and at /api/runs/{id}.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import torch
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mnistlab.data.preprocess import decode_image, from_pixels, to_mnist
from mnistlab.errors import MnistlabError
from mnistlab.inference.explain import EXTRA, METHODS, attribute, captum_available, heat_png
from mnistlab.serve.model_api import FORM_SLACK, MAX_UPLOAD, Served, grid, json_pixels, read_body, read_form, refuse


class Availability(BaseModel):
    available: bool = Field(description="Captum is installed: POST explain answers")
    methods: dict[str, str]
    default: str
    install: str


class Explanation(BaseModel):
    method: str
    method_name: str
    target: int = Field(description="the class explained")
    prediction: int
    probabilities: list[float]
    label: int | None = Field(description="the true class (test images by index), else null")
    source: str
    input: list[list[float]] = Field(description="the 28x28 image the model saw, values in [0, 1]")
    attribution: list[list[float]] = Field(description="28x28 heat map: > 0 speaks for `target`, < 0 against")
    scale: float = Field(description="the largest |attribution|")
    png: str = Field(description="the heat map as a 28x28 RGBA PNG data: URL (red for, blue against)")
    settings: dict[str, Any]
    convergence_delta: float | None = Field(description="Integrated Gradients: sum of attributions minus "
                                                        "(f(x) - f(blank)); null for other methods")


_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}, "method": {"type": "string", "enum": list(METHODS)},
                "target": {"type": "integer", "minimum": 0, "maximum": 9}}}},
            "application/json": {"schema": {"type": "object", "properties": {
                "pixels": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "index": {"type": "integer", "description": "a test-split image instead of pixels"},
                "method": {"type": "string", "enum": list(METHODS)},
                "target": {"type": "integer", "minimum": 0, "maximum": 9}}}},
        },
    }
}


def _method(value: Any) -> str:
    method = "ig" if value in (None, "") else value
    if not isinstance(method, str) or method not in METHODS:
        raise refuse(422, f"unknown method {value!r}; choose from {', '.join(METHODS)}")
    return method


def _target(value: Any) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise refuse(422, f"target must be a class 0-9, got {value!r}")
    return value


def _sig(v: float) -> float:
    return float(f"{v:.4g}") + 0.0  # no -0.0


def explain_image(served: Served, image: torch.Tensor, blank: bool, source: str, method: str, target: int | None,
                  label: int | None = None) -> dict[str, Any]:
    """The answer for one preprocessed (28, 28) image."""
    if blank:
        raise refuse(422, "blank image: no digit found, nothing to explain")
    try:
        att = attribute(served.loaded, image.reshape(1, 28, 28), method, target)
    except MnistlabError as e:
        raise refuse(422, str(e)) from None
    a = att.maps[0]
    probs = att.probabilities[0]
    scale = float(a.abs().max())
    return {
        "method": method, "method_name": METHODS[method], "target": att.targets[0],
        "prediction": int(probs.argmax()), "probabilities": [round(float(v), 6) for v in probs], "label": label,
        "source": source, "input": grid(image), "attribution": [[_sig(v) for v in row] for row in a.tolist()],
        "scale": scale, "png": "data:image/png;base64," + base64.b64encode(heat_png(a, scale)).decode(),
        "settings": att.settings, "convergence_delta": None if att.delta is None else att.delta[0],
    }


def explain_router(provide: Callable[..., Served], max_upload: int = MAX_UPLOAD) -> APIRouter:
    """GET and POST explain for the model `provide` (a FastAPI dependency) returns."""
    router = APIRouter()
    served_model = Depends(provide)

    @router.get("/explain", response_model=Availability)
    def availability(served: Served = served_model) -> dict[str, Any]:
        """Whether attributions are available (Captum installed), and the methods."""
        return {"available": captum_available(), "methods": METHODS, "default": "ig", "install": EXTRA}

    @router.post("/explain", response_model=Explanation, openapi_extra=_BODY)
    async def explain(request: Request, served: Served = served_model) -> dict[str, Any]:
        """The attribution of an image (as predict takes it, or a test image by `index`) for `target` (default:
        the predicted class) by `method` (default ig): numbers and a PNG to overlay."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("multipart/form-data", "application/json"):
            raise refuse(415, f"unsupported content type {ctype or 'none'!r}; send multipart/form-data with "
                               "a 'file' field, or application/json {\"pixels\": ...} or {\"index\": N}")
        body = await read_body(request, max_upload + FORM_SLACK)
        query = request.query_params
        label = None
        try:
            if ctype == "multipart/form-data":
                data, source, fields = await read_form(request, body, max_upload)
                method, target = _method(fields.get("method", query.get("method"))), \
                    _target(fields.get("target", query.get("target")))
                image, blank = await run_in_threadpool(lambda: to_mnist(decode_image(data, source)))
            else:
                try:
                    obj = json.loads(body)
                except (ValueError, RecursionError):
                    raise refuse(422, "request body is not valid JSON") from None
                if not isinstance(obj, dict):
                    raise refuse(422, 'expected a JSON object {"pixels": 28x28 numbers in [0, 1]} or {"index": N}')
                method, target = _method(obj.get("method", query.get("method"))), \
                    _target(obj.get("target", query.get("target")))
                if "index" in obj and "pixels" not in obj:
                    image, label, source = await run_in_threadpool(_test_image, served, obj["index"])
                    blank = False
                else:
                    source = "pixels"
                    image, blank = from_pixels(json_pixels(body))
        except MnistlabError as e:
            raise refuse(422, str(e)) from None
        if not captum_available():
            raise refuse(503, f"attributions need Captum, which is not installed here: {EXTRA}")
        return await run_in_threadpool(explain_image, served, image, blank, source, method, target, label)

    return router


def _test_image(served: Served, index: Any) -> tuple[torch.Tensor, int, str]:
    try:
        images, labels = served.gallery.split()
    except MnistlabError as e:
        raise refuse(503, f"test images unavailable: {e}") from None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(labels):
        raise refuse(422, f"index must be an integer 0-{len(labels) - 1}, got {index!r}")
    return images[index].float() / 255.0, int(labels[index]), f"test #{index}"
