"""Users of the embedded core: the ``[core] users`` file.

File format
-----------
One user per line; blank lines and lines whose first non-blank character is ``#`` are
ignored::

    # user:password [public identity ...]
    alice:alice-secret
    bob:bob-secret sip:bob@ims.localdomain tel:+15550002

* ``user`` is the digest username and the user part of the user's default public
  identity ``sip:user@<domain>`` (``[core] domain``).  It must not contain ``:``,
  ``@``, ``"``, ``\\`` or whitespace.
* ``password`` runs from the first ``:`` to the first whitespace (so it cannot contain
  spaces); it is stored in clear text because digest with several algorithms
  (RFC 8760: SHA-256 and MD5) needs ``H(user:realm:password)`` for each of them.  This is
  a lab core: keep the file readable only by the service user.
* after the password, optional extra public identities (``sip:``/``sips:``/``tel:`` URIs,
  separated by whitespace) are added after the default one, in order, for
  ``P-Associated-URI`` (RFC 7315 §4.1: the first is the default public identity).

Errors name the file, the line and the problem (``UsersFileError``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from epcscf.sip.uri import UriError, parse_uri

__all__ = ["User", "UserDirectory", "UsersFileError", "parse_users", "read_users"]

_USER_RE = re.compile(r'[^\s:@"\\]+\Z')


class UsersFileError(ValueError):
    """A malformed users file; the message names file, line and reason."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        super().__init__(f"{source} line {line}: {reason}")
        self.source = source
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class User:
    name: str
    password: str
    #: public identities, the default (``sip:name@domain``) first
    identities: tuple[str, ...]


def parse_users(text: str, domain: str, source: str = "<users>") -> list[User]:
    """Parse the users file format above."""
    users: list[User] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        name, colon, password = fields[0].partition(":")
        if not colon:
            raise UsersFileError(source, number, "expected user:password")
        if not _USER_RE.match(name):
            raise UsersFileError(source, number, f"user name {name!r} is empty or holds one of : @ \" \\ or a space")
        if not password:
            raise UsersFileError(source, number, f"user {name!r} has an empty password")
        if name in seen:
            raise UsersFileError(source, number, f"user {name!r} is listed twice")
        seen.add(name)
        identities = [f"sip:{name}@{domain}"]
        for identity in fields[1:]:
            try:
                uri = parse_uri(identity)
            except UriError as error:
                raise UsersFileError(source, number, f"public identity {identity!r} is not a SIP or tel URI: {error}") from None
            if getattr(uri, "scheme", "").lower() not in ("sip", "sips", "tel"):
                raise UsersFileError(source, number, f"public identity {identity!r} is not a SIP or tel URI")
            if identity not in identities:
                identities.append(identity)
        users.append(User(name, password, tuple(identities)))
    return users


def read_users(path: str, domain: str) -> list[User]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UsersFileError(path, 0, f"cannot read: {error}") from None
    return parse_users(text, domain, path)


class UserDirectory:
    """The users the embedded core serves: passwords for digest, identities for the registrar."""

    def __init__(self, users: Iterable[User]) -> None:
        self._users = {user.name: user for user in users}

    @classmethod
    def from_file(cls, path: str, domain: str) -> "UserDirectory":
        return cls(read_users(path, domain))

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, name: object) -> bool:
        return name in self._users

    def user(self, name: str) -> User | None:
        return self._users.get(name)

    def password(self, name: str) -> str | None:
        """Clear-text password for digest (``epcscf.core.digest``), None for an unknown user."""
        user = self._users.get(name)
        return user.password if user is not None else None

    def public_identities(self, name: str) -> list[str] | None:
        """The user's public identities (first = default), None for an unknown user."""
        user = self._users.get(name)
        return list(user.identities) if user is not None else None
