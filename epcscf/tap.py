"""``twistd epcscf``: command-line options and the service maker.

Nothing here imports the reactor at module level: twistd imports this module
before deciding on a reactor, and ``Options.postOptions`` installs the edge's
asyncio reactor (aioice needs an asyncio loop; ``epcscf.event_loop``) unless the
user already chose an asyncio one.
"""

from __future__ import annotations

import os
import sys

from twisted.python import usage

from epcscf.config import Config, ConfigError, describe, load

# Where the default config is found when --config is not given: the checkout's
# etc/ (running from source) or the data_files installed beside the package.
DEFAULT_CONFIGS = (
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "epcscf.ini"),
    os.path.join(sys.prefix, "etc", "epcscf", "epcscf.ini"),
)


def install_asyncio_reactor() -> None:
    """Install the edge's asyncio reactor, or fail if a non-asyncio reactor is already installed."""
    if "twisted.internet.reactor" not in sys.modules:
        from epcscf import event_loop

        event_loop.install()
        return
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise usage.UsageError(f"epcscf needs the asyncio reactor (-r asyncio); got {type(reactor).__name__}")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the eP-CSCF. Configuration comes from one or more ini files "
        "(--config, later files override earlier ones); --config-reference lists every key."
    )
    optParameters = [
        ["config", "c", None, "ini file (repeatable; default: etc/epcscf.ini)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["configs"] = []
        self.config: Config | None = None

    def opt_config_reference(self) -> None:
        """Print every configuration section and key with its default and meaning, then exit."""
        print(describe())
        raise SystemExit(0)

    def opt_config(self, path: str) -> None:
        self["configs"].append(path)

    opt_c = opt_config

    def postOptions(self) -> None:
        try:
            install_asyncio_reactor()
        except usage.UsageError as error:
            _fail(f"usage error: {error}")
        paths = self["configs"] or [next((p for p in DEFAULT_CONFIGS if os.path.exists(p)), DEFAULT_CONFIGS[0])]
        try:
            self.config = load(paths)
        except ConfigError as error:
            _fail(f"configuration error: {error}")
        from epcscf.logging import use_for_twistd

        _report_startup_errors_in_one_line()

        parent = getattr(self, "parent", None)
        if parent is not None and not parent.get("logger"):
            # Replace twistd's text observer with ours (level filter, text or JSON),
            # writing where twistd would have written (-l/--logfile, stdout with -n).
            # (twistd resolves the option by name after this method returns.)
            parent["logger"] = use_for_twistd(self.config.log, parent)


def _fail(message: str) -> None:
    """One line on stderr and a non-zero exit; twistd would print its whole usage text."""
    sys.stderr.write(f"twistd epcscf: {message}\n")
    raise SystemExit(2)


def _report_startup_errors_in_one_line() -> None:
    """A StartupError ends twistd with one line instead of a traceback (``-n`` mode)."""
    previous = sys.excepthook

    def hook(kind, value, traceback) -> None:  # type: ignore[no-untyped-def]
        from epcscf.service import StartupError

        if isinstance(value, StartupError):
            sys.stderr.write(f"twistd epcscf: {value}\n")
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def makeService(options: Options):  # noqa: N802 (twistd's name)
    from twisted.internet import reactor

    from epcscf.memory import tune_collector
    from epcscf.service import EpcscfService

    assert options.config is not None
    if options.config.service.workers > 1:
        from epcscf.workers.supervisor import SupervisorService

        # The supervisor handles no SIP: its collector thresholds can stay Python's.
        return SupervisorService(options.config)
    service = EpcscfService(options.config)
    # Collector pauses of 100–400 ms were measured at 1,000 SIP transactions/s with the
    # default thresholds (benchmarks/sip_proxy.py): see epcscf.memory.
    tune_collector(reactor)
    return service
