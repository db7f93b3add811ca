"""The teaching assistant's side of the lab: check a handed-in notebook, grade a class.

The path a check takes, module by module:

    read      the .ipynb (nbformat) as a list of cells: source, execution count, printed text, errors
    evidence  what the code says (its syntax tree, `ast`) and what the outputs printed (epochs, accuracies)
    answers   the student's answers, found in Markdown, raw cells or rendered Markdown outputs
    checks    each question of the lab against that evidence: ok, mismatch, missing or review
    weights   a handed-in weight file loaded safely and scored on the 10,000 MNIST test images
    reports   the human table, feedback pages, grades.csv/grades.json and class.html
    grade     a class: submissions in, one report per student, duplicates, shards and their merge
"""

from __future__ import annotations

# The lab's questions, in the order the lab asks them: Exercise 1's seven, then Exercises 2, 3 and 4.
QUESTIONS = ("1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "2", "3", "4")

TITLES = {
    "1.1": "batch size", "1.2": "epochs", "1.3": "layers", "1.4": "the layers described",
    "1.5": "optimizer", "1.6": "more epochs?", "1.7": "accuracy per epoch", "2": "better settings",
    "3": "SGD", "4": "save and reload",
}

STATUSES = ("ok", "mismatch", "missing", "review")
