"""Log observers from ``[log]``: readable text or JSON lines, filtered by level.

One ``LogLevelFilterPredicate`` is shared by the process so that the console's
``set_log_level`` can change levels per namespace while running.

Twisted's own port life-cycle lines ("WwsfSite starting on 8081", "(UDP Port 5060 Closed)")
come through its legacy log at info level for every listener, whatever ``noisy`` says;
epcscf logs each service's listeners in one line of its own, so those lines are written
only when the level is debug.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

from epcscf.config import LogSection

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

#: process-wide level filter; namespaces may be given their own level
level_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)


def set_log_level(namespace: str, level: str) -> None:
    """Change the level of one namespace (``""`` for the default) while running."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    level_predicate.setLogLevelForNamespace(namespace, LEVELS[level])


def info_logged(namespace: str) -> bool:
    """Whether the process filter lets ``namespace``'s info events through: a line written for
    every call is then not built only to be dropped (``Logger.emit`` and the observer chain
    cost more than the check)."""
    return level_predicate({"log_level": LogLevel.info, "log_namespace": namespace}) is not PredicateResult.no


#: twisted.internet.tcp/udp Port.startListening and connectionLost (legacy log.msg text)
_PORT_LIFE_CYCLE = re.compile(r"\S+(?: \(\S+\))* starting on \d+|\(\w+ Port \d+ Closed\)")


def port_life_cycle_at_debug(event: dict[str, Any]) -> PredicateResult:
    """Drop Twisted's per-port start/close lines unless the level is debug (see the module docstring)."""
    if event.get("log_namespace") != "log_legacy" or event.get("log_level") is not LogLevel.info:
        return PredicateResult.maybe
    message = event.get("message")
    if not (isinstance(message, tuple) and len(message) == 1 and isinstance(message[0], str)):
        return PredicateResult.maybe
    if _PORT_LIFE_CYCLE.fullmatch(message[0]) and level_predicate.logLevelForNamespace("log_legacy") > LogLevel.debug:
        return PredicateResult.no
    return PredicateResult.maybe


def make_observer(settings: LogSection, stream: IO[Any]) -> ILogObserver:
    set_log_level("", settings.level)
    if settings.format == "json":
        inner = jsonFileLogObserver(stream, recordSeparator="")
    else:
        inner = textFileLogObserver(stream)
    return FilteringLogObserver(inner, [port_life_cycle_at_debug, level_predicate])


_twistd_settings: tuple[LogSection, Any] | None = None


def use_for_twistd(settings: LogSection, twistd_options: Any) -> str:
    """Make ``twistd_observer`` the observer twistd starts; returns its name for ``--logger``."""
    global _twistd_settings
    _twistd_settings = (settings, twistd_options)
    return f"{__name__}.twistd_observer"


def twistd_observer() -> ILogObserver:
    """Observer factory named in twistd's ``logger`` option; honours -l and -n like twistd does."""
    assert _twistd_settings is not None, "use_for_twistd() was not called"
    settings, options = _twistd_settings
    logfile = options.get("logfile")
    stream: IO[Any]
    if logfile == "-" or (options.get("nodaemon") and not logfile):
        stream = sys.stdout
    else:
        stream = LogFile.fromFullPath(logfile or "twistd.log")
    return make_observer(settings, stream)
