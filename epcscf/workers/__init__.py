"""Shared-nothing worker processes (``[service] workers`` > 1).

``twistd epcscf`` then runs a small supervisor (``supervisor``) that spawns N workers
(``worker``), each a whole eP-CSCF with its own core-facing SIP port, its own slice of the
media ports and its own flows, registrations and calls; the WebSocket ports are shared
(``sockets``).  The supervisor runs what must exist once — the embedded core, the WWSF
page, the console and ``/metrics`` — and reaches the workers over AMP (``control``).
"""
