"""Log observers from ``[log]``: readable text or JSON lines, filtered by level.

One ``LogLevelFilterPredicate`` is shared by the process so that the console's
``set_log_level`` can change levels per namespace while running.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
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


def make_observer(settings: LogSection, stream: IO[Any]) -> ILogObserver:
    set_log_level("", settings.level)
    if settings.format == "json":
        inner = jsonFileLogObserver(stream, recordSeparator="")
    else:
        inner = textFileLogObserver(stream)
    return FilteringLogObserver(inner, [level_predicate])


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
