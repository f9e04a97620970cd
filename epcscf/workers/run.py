"""``python -m epcscf.workers.run``: a worker process (see ``epcscf.workers.worker``).

The edge's asyncio reactor (aioice needs an asyncio loop; ``epcscf.event_loop``) is installed
before the rest of epcscf is imported, as ``epcscf.tap`` does for twistd: some modules import
the reactor.
"""

import os

from epcscf import event_loop

# A process group of its own: a signal meant for the supervisor's group (Ctrl-C in a
# terminal, a service manager's kill of the group) reaches the supervisor alone, which
# passes SIGTERM/SIGHUP on — each worker gets each signal once.
os.setpgrp()

event_loop.install()

from epcscf.workers.worker import main  # noqa: E402  (after the reactor is installed)

main()
