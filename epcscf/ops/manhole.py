"""The SSH console: a Python shell inside the running daemon (twisted.conch manhole).

Bound to 127.0.0.1 only; users and their bcrypt password hashes come from the
file named in ``[manhole] users``; the ed25519 host key is generated on first
start and kept in ``[manhole] host_key``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import Service
from twisted.conch import manhole, manhole_ssh
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="epcscf.ops.manhole")


class UsersFileError(ValueError):
    """A malformed manhole users file; the message names file, line and reason."""


def read_users(path: str) -> dict[bytes, bytes]:
    """``user:bcrypt-hash`` lines; ``#`` comments and blank lines ignored."""
    users: dict[bytes, bytes] = {}
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = raw.strip()
            if not line or line.startswith(b"#"):
                continue
            user, sep, hashed = line.partition(b":")
            if not sep or not user or not hashed.startswith(b"$2"):
                raise UsersFileError(f"{path}:{number}: expected user:bcrypt-hash (make one with bin/manhole-passwd)")
            users[user] = hashed
    return users


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


@implementer(ICredentialsChecker)
class BcryptChecker:
    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, users: dict[bytes, bytes]) -> None:
        self.users = users

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred[bytes]:  # noqa: N802
        hashed = self.users.get(creds.username)
        if hashed is not None and bcrypt.checkpw(creds.password, hashed):
            return defer.succeed(creds.username)
        return defer.fail(error.UnauthorizedLogin("wrong user name or password"))


def load_or_create_host_key(path: str) -> keys.Key:
    if os.path.exists(path):
        return keys.Key.fromFile(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    log.info("generated manhole SSH host key {path}", path=path)
    return keys.Key(private)


class ManholeService(Service):
    """Listens for SSH on 127.0.0.1:port; each session gets a manhole on ``namespace()``."""

    def __init__(self, port: int, users_file: str, host_key_file: str, namespace: Callable[[], dict[str, Any]]) -> None:
        self.port_number = port
        self.users_file = users_file
        self.host_key_file = host_key_file
        self.namespace = namespace
        self._listener: IListeningPort | None = None

    @property
    def port(self) -> int | None:
        """The bound port (useful when configured as 0)."""
        return None if self._listener is None else self._listener.getHost().port

    def _factory(self) -> manhole_ssh.ConchFactory:
        realm = manhole_ssh.TerminalRealm()

        def chained_protocol() -> insults.ServerProtocol:
            return insults.ServerProtocol(manhole.ColoredManhole, self.namespace())

        realm.chainedProtocolFactory = chained_protocol
        factory = manhole_ssh.ConchFactory(Portal(realm, [BcryptChecker(read_users(self.users_file))]))
        factory.noisy = False  # no "Starting factory" line; startService logs the console's address
        host_key = load_or_create_host_key(self.host_key_file)
        factory.publicKeys = {host_key.sshType(): host_key.public()}
        factory.privateKeys = {host_key.sshType(): host_key}
        return factory

    def startService(self) -> None:  # noqa: N802
        from twisted.internet import reactor

        super().startService()
        # Bound synchronously so that a port in use stops the start-up with a clear error.
        self._listener = reactor.listenTCP(self.port_number, self._factory(), interface="127.0.0.1")
        log.info("manhole SSH console on 127.0.0.1:{port}", port=self.port)

    def stopService(self) -> defer.Deferred[None] | None:  # noqa: N802
        super().stopService()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            return defer.maybeDeferred(listener.stopListening)
        return None


def passwd_main() -> None:
    """``bin/manhole-passwd USER``: print a users-file line for USER (asks for the password)."""
    import getpass
    import sys

    if len(sys.argv) != 2:
        sys.stderr.write("usage: manhole-passwd USER\n")
        raise SystemExit(2)
    password = getpass.getpass(f"password for {sys.argv[1]}: ")
    print(f"{sys.argv[1]}:{hash_password(password)}")
