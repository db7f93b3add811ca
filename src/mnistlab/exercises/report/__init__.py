"""The lab's report: report.md, report.html (one self-contained file) and lab_answers.ipynb (nbformat v4)."""

from __future__ import annotations

from pathlib import Path

from mnistlab.exercises.report.blocks import document_html, section_md
from mnistlab.exercises.report.sections import sections

TITLE = "Neural Networks Part 2: MNIST lab answers"


def code_cells(r) -> dict[str, str]:
    """Per section title prefix, the code that reproduces it through the mnistlab Python API."""
    cfg, s = r.config, r.settings
    common = f"data_dir={r.data_dir!r}, " if r.data_dir else ""
    sub = (f", subset={cfg.subset}" if cfg.subset else "") + (f", val={cfg.val}" if cfg.val else "")
    return {
        "Exercise 1": (
            "import mnistlab\nfrom mnistlab.exercises.analysis import analyse\n\n"
            f"info = mnistlab.inspect(\"notebook\")  # questions 1-5\n"
            "print(info[\"print_model\"])\n"
            f"run = mnistlab.train(\"notebook\", epochs={cfg.epochs}{sub}, {common}out=\"my-lab/exercise1\")\n"
            "facts = analyse(run.history)  # questions 6 and 7\n"
            "print(facts[\"verdict\"]); print(facts[\"answer\"])\n"
            "for row in facts[\"table\"]:\n    print(row[\"epoch\"], round(row[\"test_acc\"], 2))"),
        "Exercise 2": (
            f"sweep = mnistlab.sweep(\"notebook\", lrs={s['lrs']}, epochs={s['sweep_epochs']}{sub}, {common}"
            "out=\"my-lab/exercise2\", runs=[\"my-lab/exercise1\"])\nprint(\"\\n\".join(sweep.summary))  # chosen by val\n"
            "# question 6 again, with its direct evidence: the sweep continued step 1's very run\n"
            "longer = next(h for h in sweep.curves.values() if h[: len(run.history)] == run.history)\n"
            "print(analyse(run.history, continued=longer)[\"answer\"])"),
        "Exercise 3": (
            f"cmp = mnistlab.compare(\"notebook\", \"adam,sgd,plain-sgd=sgd\", {{\"plain-sgd\": {{\"lr\": {cfg.lr}, "
            f"\"momentum\": 0.0}}}}, epochs={cfg.epochs}{sub}, {common}out=\"my-lab/exercise3\", "
            "reuse={\"adam\": \"my-lab/exercise1\"})\nprint(\"\\n\".join(cmp.summary))"),
        "Exercise 4": (
            "from mnistlab.files.checkpoints import model_metadata, save_model\nfrom mnistlab.use.predict import classify_indices\n\n"
            "save_model(run.model, \"my-lab/model.safetensors\", model_metadata(run.config))\n"
            "loaded = mnistlab.load(\"my-lab/model.safetensors\")  # a fresh model object, nothing executed\n"
            f"for res in classify_indices(loaded, [0, 1, 2, 3, 4], split=\"train\"{', data_dir=' + repr(r.data_dir) if r.data_dir else ''}):\n"
            "    print(res[\"input\"], res[\"label\"], res[\"prediction\"], max(res[\"probabilities\"]))"),
        "The notebook's two quirks": (
            f"ds = mnistlab.train(\"notebook\", epochs=1, double_softmax=True{sub}, {common}write_run=False)\n"
            "print(ds.history[0][\"train_loss\"], \"vs\", run.history[0][\"train_loss\"])"),
    }


def notebook(r, secs) -> str:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    base = r.run_dir
    cells = [new_markdown_cell(f"# {TITLE}\n\nFilled in by `mnistlab lab`: each exercise's questions, the answers "
                               "with the numbers of this run, and code reproducing each step with the mnistlab API "
                               "(run it from the lab directory).")]
    code = code_cells(r)
    for sec in secs:
        cells.append(new_markdown_cell(section_md(sec, base)))
        for prefix, src in code.items():
            if sec[0].startswith(prefix):
                cells.append(new_code_cell(src))
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.validate(nb)
    return nbformat.writes(nb)


def write_report(r) -> dict[str, Path]:
    """report.md, report.html and lab_answers.ipynb in the lab directory."""
    from mnistlab.files.runs import atomic_write

    secs = sections(r)
    base = r.run_dir
    md = f"# {TITLE}\n\n" + "\n".join(section_md(s, base) for s in secs)
    return {"md": atomic_write(base / "report.md", md),
            "html": atomic_write(base / "report.html", document_html(TITLE, secs)),
            "ipynb": atomic_write(base / "lab_answers.ipynb", notebook(r, secs))}
