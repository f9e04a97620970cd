# twistd finds this dropin by scanning twisted/plugins on sys.path; it must stay
# trivial: twistd imports every plugin on every run (even `twistd web`), so
# nothing here may import the reactor or install one (see epcscf.tap).
from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

epcscf = ServiceMaker(
    "epcscf",
    "epcscf.tap",
    "eP-CSCF: SIP over WebSocket access to an IMS core (3GPP TS 24.371)",
    "epcscf",
)

# The edge's reactor by name, for `twistd -r epcscf` and `trial --reactor=epcscf` (bin/test):
# Twisted's asyncio reactor without a log context per I/O event (epcscf.event_loop).
epcscf_reactor = Reactor("epcscf", "epcscf.event_loop", "asyncio reactor as the eP-CSCF runs it (direct I/O dispatch)")
