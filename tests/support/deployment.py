"""A whole epcscf (eP-CSCF + embedded core) running in the test process on 127.0.0.1, port 0."""

from __future__ import annotations

import os
from typing import Callable

from twisted.trial import unittest

from epcscf.config import Config, load
from epcscf.service import EpcscfService

USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
DOMAIN = "ims.localdomain"


def write_users(directory: str, users: dict[str, str] | None = None) -> str:
    """The embedded core's users file (``user:password`` lines) in ``directory``; its path."""
    os.makedirs(directory, exist_ok=True)
    users_file = os.path.join(directory, "users")
    with open(users_file, "w") as handle:
        handle.write("".join(f"{name}:{password}\n" for name, password in (users or USERS).items()))
    return users_file


def write_deployment_config(directory: str, users: dict[str, str] | None = None) -> str:
    """An ini file like etc/epcscf.ini but with every port picked by the kernel.

    The lag-driven overload control is off: the edge shares its event loop with the test, so a
    test's own blocking steps (spawning Kamailio, sipp, Node) or a loaded host read as lag and a
    test's REGISTER or MESSAGE got a 503.  ``tests.test_pcscf_overload`` turns it on.
    """
    users_file = write_users(directory, users)
    path = os.path.join(directory, "epcscf.ini")
    with open(path, "w") as handle:
        handle.write(
            f"""\
[service]
state_dir = {directory}/var
[sip]
listen = udp:127.0.0.1:0
[ws]
listen = ws:127.0.0.1:0
allowed_origins = http://127.0.0.1:8081
[core]
mode = embedded
domain = {DOMAIN}
listen = udp:127.0.0.1:0
users = {users_file}
[media]
port_range = 40000-40999
[overload]
enabled = false
"""
        )
    return path


def start_deployment(
    test: unittest.TestCase, extra: str = "", before_start: Callable[[EpcscfService], None] | None = None
) -> EpcscfService:
    """Start epcscf with the embedded core; stopped when the test ends.

    ``extra`` is a second ini file's text: its keys override the deployment's.  ``before_start``
    may replace parts of the built service (a DNS resolver double) before it starts.
    """
    directory = os.path.abspath(test.mktemp())
    files = [write_deployment_config(directory)]
    if extra:
        files.append(os.path.join(directory, "override.ini"))
        with open(files[-1], "w") as handle:
            handle.write(extra)
    config: Config = load(files)
    service = EpcscfService(config)
    if before_start is not None:
        before_start(service)
    service.startService()
    test.addCleanup(service.stopService)
    return service


def ws_url(service: EpcscfService) -> str:
    listener = service.pcscf.listener("WS")
    assert listener is not None
    return f"ws://127.0.0.1:{listener.address.port}"
