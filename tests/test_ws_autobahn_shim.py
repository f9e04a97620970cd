"""``epcscf.ws.autobahn_shim`` against the Autobahn installed: its assumptions, read from Autobahn's source.

Each test parses the source of the Autobahn classes ``SipWebSocketServerProtocol`` inherits
(``inspect.getsource``) and fails, naming Autobahn's method, when a new Autobahn release
reads a dropped handshake attribute outside the opening handshake, uses the write queue in
another way, or changes what its ``dataReceived`` does.  Then the shim must be re-read
against that release (and ``AUTOBAHN_CHECKED`` moved on).  ``tests.test_ws_protocol`` shows
the shim at work on real connections.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Iterator

import autobahn
from twisted.trial import unittest

from epcscf.ws.autobahn_shim import AUTOBAHN_CHECKED, HANDSHAKE_ONLY_ATTRIBUTES, LeanAutobahnProtocol
from epcscf.ws.protocol import SipWebSocketServerProtocol

#: Autobahn's methods that run before ``onOpen``: at TCP connect and in the opening handshake
HANDSHAKE_METHODS = frozenset({"_connectionMade", "processHandshake", "succeedHandshake"})


@functools.lru_cache(maxsize=None)
def every_autobahn_method() -> tuple[ast.FunctionDef, ...]:
    """Every method of every Autobahn class our protocol inherits, overridden ones included
    (they run too, through ``super()``)."""
    methods = []
    for cls in SipWebSocketServerProtocol.__mro__:
        if cls.__module__.startswith("autobahn."):
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
            body = tree.body[0]
            assert isinstance(body, ast.ClassDef)
            methods.extend(node for node in body.body if isinstance(node, ast.FunctionDef))
    return tuple(methods)


def autobahn_methods() -> dict[str, ast.FunctionDef]:
    """Autobahn's methods as our protocol resolves them (the first class in the MRO wins)."""
    methods: dict[str, ast.FunctionDef] = {}
    for method in every_autobahn_method():
        methods.setdefault(method.name, method)
    return methods


def self_attributes(node: ast.AST, names: frozenset[str] | tuple[str, ...]) -> Iterator[ast.Attribute]:
    for child in ast.walk(node):
        if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id == "self":
            if child.attr in names:
                yield child


def is_call_to(node: ast.AST, name: str) -> bool:
    """True when ``node`` holds a call of a method or function called ``name``."""
    return any(
        isinstance(call, ast.Call)
        and ((isinstance(call.func, ast.Attribute) and call.func.attr == name) or (isinstance(call.func, ast.Name) and call.func.id == name))
        for call in ast.walk(node)
    )


def statements_after(function: ast.FunctionDef, call: str) -> list[ast.stmt]:
    """Statements that can run after the statement holding the call to ``call`` (same block
    or any enclosing one, never an ``else``/``elif`` alternative of it)."""
    later: list[ast.stmt] = []

    def visit(block: list[ast.stmt]) -> bool:
        for index, statement in enumerate(block):
            inner = [
                getattr(statement, field) for field in ("body", "orelse", "finalbody") if getattr(statement, field, None)
            ] + [handler.body for handler in getattr(statement, "handlers", [])]
            holds = any(visit(sub) for sub in inner) if inner else False
            if holds or (not inner and is_call_to(statement, call)):
                later.extend(block[index + 1 :])
                return True
        return False

    if not visit(function.body):
        raise AssertionError(f"Autobahn's {function.name} no longer calls {call}: re-check epcscf.ws.autobahn_shim")
    return later


class AutobahnShimTests(unittest.TestCase):
    def test_dropped_attributes_are_read_only_in_the_opening_handshake(self) -> None:
        readers: dict[str, set[str]] = {}
        for method in every_autobahn_method():
            readers.setdefault(method.name, set()).update(a.attr for a in self_attributes(method, HANDSHAKE_ONLY_ATTRIBUTES))
        outside = {name: attrs for name, attrs in readers.items() if attrs and name not in HANDSHAKE_METHODS}
        self.assertEqual(
            outside, {}, f"Autobahn {autobahn.__version__} (shim checked against {AUTOBAHN_CHECKED}) reads handshake state after onOpen"
        )
        # ...and the handshake still reads them (else the list would be stale, not wrong).
        self.assertIn("http_request_data", readers["processHandshake"])
        self.assertIn("perMessageCompressionAccept", readers["succeedHandshake"])

    def test_the_handshake_reads_nothing_dropped_once_it_hands_over(self) -> None:
        methods = autobahn_methods()
        # processHandshake hands the request to onConnect, then succeedHandshake; succeedHandshake
        # ends by calling _onOpen (our onOpen, where the state is released).
        for method, call in (("processHandshake", "add_callbacks"), ("succeedHandshake", "_onOpen")):
            late = [
                f"{method} line {a.lineno}: self.{a.attr}"
                for statement in statements_after(methods[method], call)
                for a in self_attributes(statement, HANDSHAKE_ONLY_ATTRIBUTES)
            ]
            self.assertEqual(late, [], f"Autobahn {autobahn.__version__} reads handshake state after {call}")

    def test_the_handshake_runs_only_while_connecting(self) -> None:
        callers = sorted({method.name for method in every_autobahn_method() if is_call_to(method, "processHandshake")})
        self.assertEqual(callers, ["consumeData"])
        guards = [
            ast.unparse(node.test)
            for node in ast.walk(autobahn_methods()["consumeData"])
            if isinstance(node, ast.If) and any(is_call_to(statement, "processHandshake") for statement in node.body)
        ]
        self.assertTrue(guards and all("STATE_CONNECTING" in guard for guard in guards), guards)

    def test_the_write_queue_is_only_assigned_measured_appended_and_popped(self) -> None:
        uses: set[str] = set()
        for method in every_autobahn_method():
            name = method.name
            parents = {id(child): parent for parent in ast.walk(method) for child in ast.iter_child_nodes(parent)}
            for attribute in self_attributes(method, ("send_queue",)):
                parent = parents.get(id(attribute))
                if isinstance(attribute.ctx, ast.Store):
                    uses.add(f"{name}: assigned {ast.unparse(parent.value)}")  # type: ignore[union-attr]
                elif isinstance(parent, ast.Call) and ast.unparse(parent.func) == "len":
                    uses.add(f"{name}: len")
                elif isinstance(parent, ast.Attribute) and parent.attr in ("append", "popleft"):
                    uses.add(f"{name}: {parent.attr}")
                else:
                    uses.add(f"{name}: {ast.unparse(parent) if parent else '?'}")
        # The shim's property keeps an empty queue as nothing and reads it as (): every use
        # Autobahn makes of an empty queue must be len(); popleft only follows len() > 0.
        self.assertEqual(
            uses,
            {"_connectionMade: assigned deque()", "_send: len", "_send: popleft", "sendData: len", "sendData: append"},
        )

    def test_dataReceived_only_logs_then_frames(self) -> None:
        method = autobahn_methods()["dataReceived"]
        statements = [ast.unparse(statement) for statement in method.body if not is_call_to(statement, "debug")]
        self.assertEqual(statements, ["self._dataReceived(data)"])
        framing = inspect.signature(SipWebSocketServerProtocol._dataReceived)
        self.assertEqual(list(framing.parameters), ["self", "data"])
        # Ours is the one Twisted calls.
        self.assertIs(SipWebSocketServerProtocol.dataReceived, LeanAutobahnProtocol.dataReceived)

    def test_the_frame_fast_path_reads_state_autobahn_keeps(self) -> None:
        # Every attribute the fast path reads is one Autobahn assigns, defines, or copies from
        # the factory's options at connection time (CONFIG_ATTRS).
        assigned = set(SipWebSocketServerProtocol.CONFIG_ATTRS) | {
            target.attr
            for method in every_autobahn_method()
            for node in ast.walk(method)
            if isinstance(node, (ast.Assign, ast.AugAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
        }
        defined = {name for cls in SipWebSocketServerProtocol.__mro__ if cls.__module__.startswith("autobahn.") for name in vars(cls)}
        read = (
            "state", "data", "current_frame", "inside_message", "_perMessageCompress", "maxFramePayloadSize",
            "maxMessagePayloadSize", "autoFragmentSize", "maskServerFrames", "autoPingTimeoutCall",
            "autoPingRestartOnAnyTraffic",
        )
        self.assertEqual([name for name in read if name not in assigned], [])
        self.assertEqual([name for name in ("STATE_OPEN", "_cancelAutoPingTimeoutCall", "sendMessage") if name not in defined], [])

    def test_a_whole_message_costs_autobahn_only_the_hooks_the_fast_path_skips(self) -> None:
        # What Autobahn does at a message's end besides calling onMessage: counters (trafficStats),
        # timing/frame logs (off here), the ping-timeout restart (done by the fast path too) and
        # the "message" observers (none registered).  A new side effect must be re-checked.
        source = inspect.getsource(autobahn_source_class())
        for needle in ("self._onMessage(payload, self.message_is_binary)", 'self.fire("message"', "self._cancelAutoPingTimeoutCall()"):
            self.assertIn(needle, source)


def autobahn_source_class() -> type:
    from autobahn.websocket.protocol import WebSocketProtocol

    return WebSocketProtocol

    def test_a_dropped_attribute_reads_as_the_factory_option_or_empty(self) -> None:
        class Factory:
            allowedOrigins = ["https://wwsf.example"]

        protocol = SipWebSocketServerProtocol()
        protocol.factory = Factory()
        protocol.http_headers = {"host": "edge"}
        protocol.allowedOrigins = ["*"]
        self.assertEqual(protocol.http_headers, {"host": "edge"})  # its own, during the handshake
        protocol.release_handshake()
        self.assertEqual(protocol.http_headers, {})
        self.assertEqual(protocol.allowedOrigins, ["https://wwsf.example"])
        self.assertIsNone(protocol._wskey)
        protocol.http_headers = {"again": "1"}  # Autobahn may still assign one
        self.assertEqual(protocol.http_headers, {"again": "1"})
        with self.assertRaises(AttributeError):
            protocol.no_such_attribute  # noqa: B018 - other names are not made up

    def test_no_class_of_ours_hooks_attribute_reads(self) -> None:
        # A ``__getattr__`` anywhere in the MRO sends every attribute read of a connection
        # through the slower hook (the frame fast path reads a dozen per message).
        self.assertFalse(any("__getattr__" in vars(cls) for cls in SipWebSocketServerProtocol.__mro__))
