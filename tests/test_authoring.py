"""course_lib.grading.authoring writes notebooks nbgrader understands."""
import nbformat
import pytest

from course_lib.grading import authoring


def test_cells_carry_nbgrader_metadata(tmp_path):
    path = authoring.write_notebook(tmp_path / "ex99_demo.ipynb", [
        authoring.markdown("intro", "# Demo"),
        authoring.setup_cell("ex99_demo"),
        authoring.solution("part1", "def f():\n    ### BEGIN SOLUTION\n    return 1\n"
                                    "    ### END SOLUTION"),
        authoring.tests("part1-tests", 2, "checks.check(f)", "checks.check(f, hidden=True)"),
    ])
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    meta = [c.metadata["nbgrader"] for c in nb.cells]
    assert [m["grade_id"] for m in meta] == ["intro", "setup", "part1", "part1-tests"]
    assert meta[2]["solution"] and not meta[2]["locked"]
    assert meta[3]["grade"] and meta[3]["points"] == 2 and meta[3]["locked"]
    assert "### BEGIN HIDDEN TESTS" in nb.cells[3].source
    assert "import course_lib.checks.ex99_demo as checks" in nb.cells[1].source
    assert authoring.publishing().site_url + authoring.WHEEL_FOLDER in nb.cells[1].source
    assert all(c.get("outputs", []) == [] for c in nb.cells)


def test_duplicate_grade_ids_rejected(tmp_path):
    with pytest.raises(ValueError, match="duplicate grade_id"):
        authoring.write_notebook(tmp_path / "x.ipynb", [authoring.markdown("a", "x"),
                                                        authoring.markdown("a", "y")])


def test_manual_answer_is_released_as_an_empty_answer(tmp_path):
    """nbgrader's own ClearSolutions turns the model answer and rubric into "YOUR ANSWER HERE"."""
    from nbgrader.preprocessors import ClearSolutions

    path = authoring.write_notebook(tmp_path / "ex99_demo.ipynb", [
        authoring.markdown("q-md", "Which network is faster, and why?"),
        authoring.manual_answer("q", 3, "The separable one: 8x fewer mult-adds.",
                                "- 2 points: names the separable network\n- 1 point: says why"),
    ])
    nb = nbformat.read(path, as_version=4)
    cell = nb.cells[1]
    assert cell.cell_type == "markdown"
    assert cell.metadata.nbgrader == {"grade": True, "grade_id": "q", "locked": False,
                                      "points": 3, "schema_version": 3, "solution": True}
    assert "Rubric (3 points)" in cell.source and "8x fewer" in cell.source
    released, _ = ClearSolutions().preprocess(nb, {})
    assert released.cells[1].source == "YOUR ANSWER HERE"
    assert released.cells[0].source == "Which network is faster, and why?"
    with pytest.raises(ValueError, match="points > 0"):
        authoring.manual_answer("q", 0, "a", "b")


def test_a_chapter_twin_carries_the_measurements_it_reads(tmp_path, monkeypatch):
    """Colab opens a chapter's twin alone, without the book's folder: chapter 7's twin writes the
    committed measurements it reads into data/ before its own lookup of them, from book/data as
    committed; chapters that read none get no such cell."""
    from pathlib import Path

    from course_lib import bench

    book = Path(__file__).resolve().parents[1] / "book"
    twin = nbformat.read(book / "ch07_mobilenet.ipynb", as_version=4)
    ids = [c.get("id") for c in twin.cells]
    lookup = next(i for i, c in enumerate(twin.cells)
                  if c.cell_type == "code" and authoring.DATA_MARKER in c.source)
    assert "data" in ids and ids.index("data") < lookup
    line = next(l for l in twin.cells[lookup].source.splitlines() if authoring.DATA_MARKER in l)
    monkeypatch.chdir(tmp_path)  # an empty folder, as on Colab
    namespace = {"Path": Path}
    exec(twin.cells[ids.index("data")].source, namespace)
    exec(line, namespace)
    found = namespace["DATA"]
    assert found.resolve() == (tmp_path / "data").resolve()
    written = sorted(p.name for p in found.iterdir())
    assert {"mobilenet_bench_cpu.json", bench.REFERENCE_GPU_FILE} <= set(written)
    for name in written:
        assert (found / name).read_text() == (book / "data" / name).read_text()
    ch01 = nbformat.read(book / "ch01_standard.ipynb", as_version=4)
    assert "data" not in [c.get("id") for c in ch01.cells]
