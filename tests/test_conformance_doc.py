"""docs/conformance.md names only modules and tests that exist, so it cannot silently rot.

Every backquoted ``epcscf/…`` path in the page must be a module (or package directory) of the
repository, and every backquoted ``tests.module[.Class[.test_method]]`` must import and resolve
(inherited test methods count: that is how trial runs them).  Every row of a table with a "Tests"
column must name at least one test, so a clause cannot be listed as proven by nothing.
"""

from __future__ import annotations

import importlib
import os
import re

from twisted.trial.unittest import SynchronousTestCase

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(TOP, "docs", "conformance.md")

_CODE_SPAN = re.compile(r"`([^`]+)`")
_MODULE_PATH = re.compile(r"^epcscf/[\w/]+(\.py|/)$")  # a module or a package directory
_TEST_NAME = re.compile(r"^tests(\.\w+)+$")


def read_doc() -> str:
    with open(DOC, encoding="utf-8") as doc:
        return doc.read()


def code_spans(text: str) -> list[str]:
    return _CODE_SPAN.findall(text)


def module_paths(text: str) -> list[str]:
    return [span for span in code_spans(text) if span.startswith("epcscf/")]


def test_names(text: str) -> list[str]:
    return [span for span in code_spans(text) if span.startswith("tests.")]


def table_rows(text: str) -> list[tuple[str, list[str]]]:
    """(row text, its cells) for every body row of a table whose header has a "Tests" column."""
    rows: list[tuple[str, list[str]]] = []
    tests_column: int | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            tests_column = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if tests_column is None:
            tests_column = cells.index("Tests") if "Tests" in cells else -1
            continue
        if tests_column < 0 or set("".join(cells)) <= set("-: "):
            continue
        rows.append((line, cells))
    return rows


def resolve(name: str) -> object:
    """The object ``tests.module.Class.test`` names; raises ImportError/AttributeError if none."""
    parts = name.split(".")
    for split in range(len(parts), 1, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return target
    raise ImportError(f"no module for {name}")


class ConformanceDocTests(SynchronousTestCase):
    def test_every_module_named_exists(self) -> None:
        text = read_doc()
        paths = module_paths(text)
        self.assertGreater(len(paths), 20)
        for path in paths:
            self.assertRegex(path, _MODULE_PATH, f"{path}: not a module path")
            exists = os.path.isdir if path.endswith("/") else os.path.isfile
            self.assertTrue(exists(os.path.join(TOP, path)), f"{path}: no such module")

    def test_every_test_named_exists(self) -> None:
        names = test_names(read_doc())
        self.assertGreater(len(names), 100)
        missing = []
        for name in sorted(set(names)):
            self.assertRegex(name, _TEST_NAME, f"{name}: not a test name")
            try:
                target = resolve(name)
            except (ImportError, AttributeError) as error:
                missing.append(f"{name}: {error}")
                continue
            if callable(target) and not isinstance(target, type):
                self.assertTrue(name.rsplit(".", 1)[-1].startswith("test"), f"{name}: not a test method")
        self.assertEqual(missing, [], "docs/conformance.md names tests that do not exist")

    def test_every_table_row_names_a_module_and_a_test(self) -> None:
        rows = table_rows(read_doc())
        self.assertGreater(len(rows), 50)
        for line, cells in rows:
            self.assertEqual(len(cells), 4, f"row does not have 4 cells: {line}")
            clause, _what, where, tests = cells
            self.assertTrue(clause, f"row without a clause: {line}")
            self.assertTrue(module_paths(where), f"row names no module: {line}")
            self.assertTrue(test_names(tests), f"row names no test: {line}")

    def test_the_checker_catches_a_missing_test_and_a_row_without_tests(self) -> None:
        """The checks above are not vacuous: a wrong name fails to resolve, an empty cell is seen."""
        with self.assertRaises((ImportError, AttributeError)):
            resolve("tests.test_ws_protocol.CloseTests.test_that_does_not_exist")
        with self.assertRaises((ImportError, AttributeError)):
            resolve("tests.test_no_such_module.SomeTests.test_x")
        sample = "| Clause | What | Where | Tests |\n|---|---|---|---|\n| RFC 1 | x | `epcscf/config.py` | |\n"
        ((_line, cells),) = table_rows(sample)
        self.assertEqual(test_names(cells[3]), [])
