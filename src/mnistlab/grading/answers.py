"""The student's answers, wherever the lab's students write them.

The lab asks for the answers in text cells at the end of the notebook. They are read from Markdown and raw
cells and from the Markdown a code cell displays (`display(Markdown(...))`, how mnistlab's notebook writes
them), after the last code cell that does the lab's work; when nothing there is marked as an answer, from the
whole notebook. An answer starts at a marker at the beginning of a line:

    Q1 / Question 1 / Exercise 1.1 / 1.1 / "1." in a numbered list   -> question 1.1 (numbers 1-7)
    Exercise 2 / Ex 3 / Exercise 4                                     -> that exercise's answer
    Exercise 1 (a heading)                                             -> the numbered items below are 1.x

and runs to the next marker. The last answer found for a question is the one read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mnistlab.grading.read import Cell, Notebook

DECORATION = re.compile(r"^[\s#>*_`|]+")
SUB = re.compile(r"^(?:exercise|ex\.?|e)\s*1\s*[.,]\s*([1-7])\b|^1\.([1-7])\b|^e1\s*q([1-7])\b", re.I)
QUESTION = re.compile(r"^(?:q|question)\s*([1-7])\b", re.I)
EXERCISE = re.compile(r"^(?:exercise|ex\.?)\s*([1-4])\b(?!\s*[.,]\s*\d)", re.I)
NUMBERED = re.compile(r"^([1-7])\s*[.)]\s+")


@dataclass
class Answer:
    question: str
    cell: int
    text: str


def _key(line: str, context: str | None) -> tuple[str | None, str | None, str]:
    """(question the line starts, exercise context it sets, the line without its marker)."""
    bare = DECORATION.sub("", line)
    m = SUB.match(bare)
    if m:
        return f"1.{next(g for g in m.groups() if g)}", "1", bare[m.end():]
    m = QUESTION.match(bare)
    if m and context in (None, "1"):
        return f"1.{m.group(1)}", context, bare[m.end():]
    m = EXERCISE.match(bare)
    if m:
        n = m.group(1)
        return (None if n == "1" else n), n, bare[m.end():]
    m = NUMBERED.match(bare)
    if m and context in (None, "1"):
        return f"1.{m.group(1)}", context, bare[m.end():]
    return None, context, line


def clean(text: str) -> str:
    """An answer as plain text: Markdown emphasis and marker punctuation gone, whitespace collapsed."""
    text = re.sub(r"\*\*|__|`", "", text)
    text = re.sub(r"^[\s.:)\-–]+", "", text)
    return re.sub(r"[ \t]+", " ", text).strip()


def _blocks(cells: list[Cell]) -> list[tuple[int, str]]:
    blocks = []
    for cell in cells:
        if cell.kind in ("markdown", "raw"):
            blocks.append((cell.number, cell.source))
        blocks += [(cell.number, md) for md in cell.markdown]
    return blocks


def _answers_in(blocks: list[tuple[int, str]]) -> dict[str, Answer]:
    found: dict[str, Answer] = {}
    for number, text in blocks:
        context: str | None = None
        current: Answer | None = None
        for line in text.splitlines():
            key, context, rest = _key(line, context)
            if key is not None:
                current = Answer(key, number, rest)
                found[key] = current  # a later answer to the same question replaces an earlier one
            elif context is not None and rest is not line and current is not None and current.question != context:
                current = None  # a heading "Exercise 1" after another exercise's answer ends that answer
            elif current is not None:
                current.text += "\n" + line
    for a in found.values():
        a.text = clean(a.text)
    return {k: a for k, a in found.items() if a.text}


def _works(cell: Cell) -> bool:
    """A code cell doing the lab's work: not one that writes answers (tagged `answer`, or displaying Markdown),
    and either printing or drawing something or more than definitions and imports."""
    if cell.kind != "code" or cell.empty or "answer" in cell.tags or cell.markdown:
        return False
    only_definitions = re.match(r"\s*(def|import|from|class)\b", cell.source) is not None
    return bool(cell.text.strip() or cell.images) or not only_definitions


def find_answers(nb: Notebook) -> dict[str, Answer]:
    """Question ("1.1" ... "1.7", "2", "3", "4") -> its answer, for the questions answered."""
    last_work = max((i for i, c in enumerate(nb.cells) if _works(c)), default=-1)
    answers = _answers_in(_blocks(nb.cells[last_work + 1:]))
    return answers or _answers_in(_blocks(nb.cells))
