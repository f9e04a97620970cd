"""``[log]`` observers: Twisted's per-port start/close lines only at debug level."""

from __future__ import annotations

import io

from twisted.logger import Logger, globalLogPublisher
from twisted.python import log as legacy
from twisted.trial import unittest

from epcscf.config import LogSection
from epcscf.logging import make_observer, set_log_level

PORT_LINES = (
    "UdpTransport starting on 5060",
    "WwsfSite (_TrackedConnections) (TLS) starting on 8443",
    "(UDP Port 5060 Closed)",
    "(TCP Port 8080 Closed)",
)


class PortLifeCycleLinesTests(unittest.TestCase):
    def written(self, level: str) -> str:
        """Twisted's port lines, another legacy line and one of ours through a ``[log]`` observer."""
        self.addCleanup(set_log_level, "", "info")
        stream = io.StringIO()
        observer = make_observer(LogSection(level=level), stream)
        globalLogPublisher.addObserver(observer)
        try:
            for text in (*PORT_LINES, "Received SIGTERM, shutting down."):
                legacy.msg(text)  # how twisted.internet.tcp and udp log them
            Logger(namespace="epcscf.pcscf").info("eP-CSCF listening on ws:127.0.0.1:8080")
        finally:
            globalLogPublisher.removeObserver(observer)
        return stream.getvalue()

    def test_info_level_has_our_lines_and_not_twisteds_port_lines(self) -> None:
        text = self.written("info")
        for line in PORT_LINES:
            self.assertNotIn(line, text)
        self.assertIn("Received SIGTERM, shutting down.", text)
        self.assertIn("eP-CSCF listening on ws:127.0.0.1:8080", text)

    def test_debug_level_shows_the_port_lines(self) -> None:
        text = self.written("debug")
        for line in PORT_LINES:
            self.assertIn(line, text)


class InfoLoggedTests(unittest.TestCase):
    """``info_logged``: the filter's own answer for an info event of a namespace, so a per-call
    line skipped when it is False would have been dropped anyway."""

    def test_follows_the_filter_per_namespace(self) -> None:
        from twisted.logger import LogLevel

        from epcscf.logging import info_logged, level_predicate

        self.addCleanup(set_log_level, "", "info")
        self.addCleanup(level_predicate.clearLogLevels)
        for default, ice, expected in (("info", None, True), ("warn", None, False), ("warn", "info", True),
                                       ("info", "warn", False), ("debug", None, True)):
            level_predicate.clearLogLevels()
            set_log_level("", default)
            if ice is not None:
                set_log_level("epcscf.ice", ice)
            self.assertEqual(info_logged("epcscf.ice.agent"), expected, (default, ice))
            event = {"log_level": LogLevel.info, "log_namespace": "epcscf.ice.agent"}
            self.assertEqual(level_predicate(event).name != "no", expected)
