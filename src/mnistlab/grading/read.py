"""A handed-in notebook as the checks read it: its cells, in order, with what each one printed.

Nothing is executed: the file is parsed by nbformat and its outputs are read as text.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mnistlab.errors import ConfigError


@dataclass
class Cell:
    """One cell. `number` counts from 1 down the notebook, as a reader counts them; `text` is everything the
    cell printed (streams and text/plain results), `markdown` the Markdown it displayed (rendered answers)."""

    number: int
    kind: str  # "code", "markdown" or "raw"
    source: str
    execution_count: int | None = None
    tags: tuple[str, ...] = ()
    text: str = ""
    markdown: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the `ename` of each error output
    images: int = 0  # image outputs (a figure, the classified samples)

    @property
    def empty(self) -> bool:
        return not self.source.strip()

    @property
    def has_output(self) -> bool:
        return bool(self.text.strip() or self.markdown or self.errors or self.images)


@dataclass
class Notebook:
    path: Path
    cells: list[Cell]

    def code(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "code" and not c.empty]


def _text(value: object) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _cell(number: int, raw: dict) -> Cell:
    outputs = raw.get("outputs") or []
    cell = Cell(number, str(raw.get("cell_type", "raw")), _text(raw.get("source")), raw.get("execution_count"),
                tuple((raw.get("metadata") or {}).get("tags") or ()))
    printed: list[str] = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            printed.append(_text(out.get("text")))
        elif kind == "error":
            cell.errors.append(str(out.get("ename") or "Error"))
        elif kind in ("display_data", "execute_result"):
            data = out.get("data") or {}
            if "text/markdown" in data:
                cell.markdown.append(_text(data["text/markdown"]))
            elif any(k.startswith("image/") for k in data):
                cell.images += 1
            elif "text/plain" in data:
                printed.append(_text(data["text/plain"]))
    cell.text = "".join(t if t.endswith("\n") else t + "\n" for t in printed)
    return cell


def read_notebook(path: str | Path) -> Notebook:
    """The notebook at `path`; ConfigError in one line when it is missing or not a notebook."""
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found" if not path.exists() else f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nbformat warns about cells without ids, which older Jupyters wrote
            nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
    except (UnicodeDecodeError, json.JSONDecodeError, nbformat.reader.NotJSONError) as e:
        raise ConfigError(f"{path}: not a Jupyter notebook ({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - nbformat raises many kinds for a malformed file
        raise ConfigError(f"{path}: not a readable notebook ({type(e).__name__}: {str(e).splitlines()[0]})") \
            from None
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise ConfigError(f"{path}: not a Jupyter notebook (no cells)")
    return Notebook(path, [_cell(i + 1, dict(c)) for i, c in enumerate(cells)])
