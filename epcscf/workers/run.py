"""``python -m epcscf.workers.run``: a worker process (see ``epcscf.workers.worker``).

The asyncio reactor (aioice needs an asyncio loop) is installed before anything of epcscf
is imported, as ``epcscf.tap`` does for twistd: some modules import the reactor.
"""

import os

from twisted.internet import asyncioreactor

# A process group of its own: a signal meant for the supervisor's group (Ctrl-C in a
# terminal, a service manager's kill of the group) reaches the supervisor alone, which
# passes SIGTERM/SIGHUP on — each worker gets each signal once.
os.setpgrp()

asyncioreactor.install()

from epcscf.workers.worker import main  # noqa: E402  (after the reactor is installed)

main()
