"""The draw-a-digit web app and prediction API (`mnistlab serve`), and its loopback load test.

Needs the `serve` extra (fastapi, uvicorn, python-multipart; httpx for the load test): `pip install 'mnistlab[serve]'`.
"""

from __future__ import annotations

from mnistlab.serve.app import MAX_UPLOAD, create_app

__all__ = ["MAX_UPLOAD", "create_app"]
