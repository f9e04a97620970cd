"""The house's layering rules, read from the sources with ``ast`` so that they stay true.

``epcscf/ops`` (console, metrics, drain and reload, manhole) sees the eP-CSCF only through
``NodeOperations`` (``epcscf.pcscf.operations``): it imports nothing of the transaction
layer nor any other module of ``epcscf.pcscf``, and touches no ``_``-attribute of an object
that is not its own (``self``/``cls``).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass

from twisted.trial import unittest

import epcscf

PACKAGE = os.path.dirname(os.path.abspath(epcscf.__file__))
#: modules of epcscf.pcscf that ops/ may import: the operations interface only
OPS_MAY_IMPORT_FROM_PCSCF = frozenset({"epcscf.pcscf.operations"})


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{os.path.relpath(self.path, os.path.dirname(PACKAGE))}:{self.line}: {self.what}"


def python_files(directory: str) -> list[str]:
    return sorted(
        os.path.join(root, name) for root, _, names in os.walk(directory) for name in names if name.endswith(".py")
    )


def imported_modules(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """Per ``import``/``from … import`` statement, at any depth (lazy imports too), the absolute
    names it may import: ``from a.b import c`` may import module ``a.b`` or ``a.b.c``."""
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, [alias.name]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found.append((node.lineno, [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]))
    return found


def ops_import_rule(module: str) -> str | None:
    """Why ``epcscf/ops`` may not import ``module``; None if it may."""
    if module.startswith("epcscf.sip.transaction"):
        return "the transaction layer"
    if module.startswith("epcscf.pcscf.") and not any(
        module == allowed or module.startswith(allowed + ".") for allowed in OPS_MAY_IMPORT_FROM_PCSCF
    ):
        return "only epcscf.pcscf.operations"
    return None


def foreign_private_attributes(tree: ast.AST) -> list[tuple[int, str]]:
    """``x._name`` where ``x`` is not ``self``/``cls`` (dunders such as ``__name__`` are public)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append((node.lineno, f"{ast.unparse(node.value)}.{node.attr}"))
    return found


def ops_findings(directory: str) -> list[Finding]:
    """What breaks the rules of ``epcscf/ops`` in the Python files under ``directory``."""
    findings = []
    for path in python_files(directory):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        for line, names in imported_modules(tree):
            broken = [(name, why) for name in names if (why := ops_import_rule(name)) is not None]
            if broken:
                name, why = broken[0]  # one finding per statement
                findings.append(Finding(path, line, f"imports {name} ({why})"))
        for line, expression in foreign_private_attributes(tree):
            findings.append(Finding(path, line, f"touches {expression} (a private attribute of another object)"))
    return findings


class OpsUsesTheOperationsInterfaceTests(unittest.TestCase):
    def test_ops_imports_no_transaction_module_and_touches_no_foreign_private_attribute(self) -> None:
        findings = ops_findings(os.path.join(PACKAGE, "ops"))
        self.assertEqual([str(finding) for finding in findings], [])

    def test_the_checks_see_what_they_look_for(self) -> None:
        """The rules above are not vacuous: each flags a module written to break it."""
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "bad.py"), "w") as handle:
            handle.write(
                "from epcscf.sip.transaction_machine import State\n"
                "from epcscf.pcscf.calls import CallManager\n"
                "def f(node):\n"
                "    from epcscf.sip import transaction_server\n"
                "    node.transports._udp[0]._settings = None\n"
                "    return self._mine, node.__class__\n"
            )
        whats = [finding.what for finding in ops_findings(directory)]
        self.assertEqual(
            whats,
            [
                "imports epcscf.sip.transaction_machine (the transaction layer)",
                "imports epcscf.pcscf.calls (only epcscf.pcscf.operations)",
                "imports epcscf.sip.transaction_server (the transaction layer)",
                "touches node.transports._udp[0]._settings (a private attribute of another object)",
                "touches node.transports._udp (a private attribute of another object)",
            ],
        )


#: package → epcscf packages it must not import (each layer knows only the ones below it)
LOWER_LAYERS_MAY_NOT_IMPORT: dict[str, tuple[str, ...]] = {
    "sip": ("epcscf.ws", "epcscf.sdp", "epcscf.ice", "epcscf.media", "epcscf.pcscf", "epcscf.core",
            "epcscf.ops", "epcscf.nonsip", "epcscf.workers", "epcscf.wwsf"),
    "sdp": ("epcscf.sip", "epcscf.ws", "epcscf.ice", "epcscf.media", "epcscf.pcscf", "epcscf.core",
            "epcscf.ops", "epcscf.nonsip", "epcscf.workers"),
    # the embedded core is a peer across the network, not a library of the eP-CSCF
    "pcscf": ("epcscf.core", "epcscf.ops", "epcscf.workers"),
}


def upward_imports(directory: str, forbidden: tuple[str, ...]) -> list[Finding]:
    findings = []
    for path in python_files(directory):
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        for line, names in imported_modules(tree):
            if any(name == bad or name.startswith(bad + ".") for name in names[:1] for bad in forbidden):
                findings.append(Finding(path, line, f"imports {names[0]}"))
    return findings


class EachLayerKnowsOnlyTheOnesBelowTests(unittest.TestCase):
    def test_no_layer_imports_a_higher_one(self) -> None:
        findings = [
            str(finding)
            for package, forbidden in LOWER_LAYERS_MAY_NOT_IMPORT.items()
            for finding in upward_imports(os.path.join(PACKAGE, package), forbidden)
        ]
        self.assertEqual(findings, [])

    def test_the_check_sees_an_upward_import(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "bad.py"), "w") as handle:
            handle.write("import os\nfrom epcscf.core.digest import parse_digest\nfrom epcscf.sip import digest\n")
        whats = [finding.what for finding in upward_imports(directory, LOWER_LAYERS_MAY_NOT_IMPORT["pcscf"])]
        self.assertEqual(whats, ["imports epcscf.core.digest"])
