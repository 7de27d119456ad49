"""Who may speak for an originator: credentials on the opening handshake.

Two kinds of credential files, both ACME's formats with an optional list of the originators
the credential may claim (comma-separated exact IDs or globs: ``Cmeter*``, ``/id-mn``,
``CAdmin``):

- Basic: lines ``user:hash[:originators]``; ``hash`` is ACME's SHA-256 hex of the password, or
  an entry made by ``python -m acmews.auth hash`` (``scrypt$N$r$p$salt$key``, salted).
- Bearer: lines ``token[:originators]``.

Blank lines and lines starting with ``#`` are skipped. A connection must authenticate (401
with ``WWW-Authenticate`` otherwise; which part was wrong is not said) and may claim, with
``X-M2M-Origin``, only an originator its credential allows (403 otherwise). A credential
without a list may claim any originator except a CSE-ID (a CSE must be named by its
credential), the admin's and those another credential lists (they are reserved for it). A
connection without the header may register an AE, with an AE-ID its credential may hold. An
AE-ID registered through a credential belongs to it from then on (the CSE keeps the binding
with the AE: ``owner_of``). Comparisons take constant time; scrypt runs off the reactor
thread.

Guessing is slowed down (:mod:`acmews.throttle`): after a few failed logins for a user name
or from a client address, its attempts are refused for a while (429, ``Retry-After``); the
scrypt checks waiting are bounded per address and in all (503); and with any scrypt entry in
the file, every Basic check costs one scrypt, so that no user name shows by its timing.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import getpass
import hashlib
import hmac
import math
import secrets
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from acmews.handshake import Authorization, Handshake, HandshakeRefused, origin_header
from acmews.interfaces import IHandshakeAuthorizer
from acmews.throttle import Backoff, CheckSlots, LoginLimits

__all__ = [
    "Credential",
    "CredentialAuthorizer",
    "DefaultAuthorizer",
    "certificate_names",
    "hash_password",
    "read_basic_file",
    "read_token_file",
]

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
#: what an unknown user's password is checked against (never matches: a real salt and key
#: would be needed)
_DUMMY = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def _unauthorized() -> HandshakeRefused:
    return HandshakeRefused(
        401, "Unauthorized", {"WWW-Authenticate": 'Basic realm="acmews", Bearer realm="acmews"'}
    )


@dataclass(frozen=True, slots=True)
class Credential:
    """One line of a credential file: who, how it is checked, what it may claim."""

    #: ``basic`` (a user and a password hash) or ``bearer`` (a token)
    kind: str
    #: the user; for a token, ``token N`` after its line (for messages only)
    name: str
    #: SHA-256 hex (ACME), ``scrypt$...``, or the token itself (Bearer)
    secret: str
    #: patterns of the originators it may claim; None: any but the admin's and the listed
    originators: tuple[str, ...] | None

    @property
    def owner(self) -> str:
        """What an AE registered through this credential is bound to: ``basic:USER``, or
        ``bearer:`` and a SHA-256 prefix of the token (the same whatever its line; the token
        itself is never stored)."""
        if self.kind == "bearer":
            return "bearer:" + hashlib.sha256(self.secret.encode()).hexdigest()[:32]
        return "basic:" + self.name

    def allows(self, originator: str) -> bool:
        assert self.originators is not None
        return any(fnmatch.fnmatchcase(originator, p) for p in self.originators)


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A salted scrypt entry for a Basic credential file."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    b64 = base64.b64encode
    return "scrypt${n}${r}${p}${salt}${key}".format(
        salt=b64(salt).decode(), key=b64(key).decode(), **_SCRYPT
    )


def _verify(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a stored hash (SHA-256 hex or scrypt)."""
    if stored.startswith("scrypt$"):
        try:
            _, n, r, p, salt, key = stored.split("$")
            expected = base64.b64decode(key)
            got = hashlib.scrypt(
                password.encode(),
                salt=base64.b64decode(salt),
                n=int(n),
                r=int(r),
                p=int(p),
                dklen=len(expected),
            )
        except (ValueError, binascii.Error):
            return False
        return hmac.compare_digest(got, expected)
    got_hex = hashlib.sha256(password.encode()).hexdigest()
    return hmac.compare_digest(got_hex, stored.lower())


def _verify_padded(password: str, stored: str, pad: str | None) -> bool:
    """:func:`_verify`, then (with ``pad``) a check against ``pad`` whose result is dropped:
    what makes a SHA-256 entry as dear as a scrypt one in a file that has both."""
    ok = _verify(password, stored)
    if pad is not None:
        _verify(password, pad)
    return ok


def _parse_lines(lines: Iterable[str], fields: int, what: str) -> list[Credential]:
    credentials: list[Credential] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", fields)
        if len(parts) < fields or not all(parts[:fields]):
            expected = "user:hash" if fields == 2 else "token"
            raise ValueError(f"{what} line {number}: expected {expected}[:originators]")
        originators: tuple[str, ...] | None = None
        if len(parts) > fields:
            originators = tuple(o.strip() for o in parts[fields].split(",") if o.strip())
            if not originators:
                raise ValueError(f"{what} line {number}: an empty list of originators")
        if fields == 2:
            credentials.append(Credential("basic", parts[0], parts[1], originators))
        else:
            credentials.append(Credential("bearer", f"token {number}", parts[0], originators))
    return credentials


def read_basic_file(lines: Iterable[str]) -> list[Credential]:
    """``user:hash[:originators]`` lines."""
    return _parse_lines(lines, 2, "basic auth file")


def read_token_file(lines: Iterable[str]) -> list[Credential]:
    """``token[:originators]`` lines."""
    return _parse_lines(lines, 1, "token file")


def certificate_names(certificate: Any) -> list[str]:
    """The originators a TLS client certificate names: its subject CN and its SAN URIs."""
    if certificate is None:
        return []
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = (
            certificate.to_cryptography()
            if hasattr(certificate, "to_cryptography")
            else certificate
        )
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return names
        return names + [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    except Exception:
        return []


@implementer(IHandshakeAuthorizer)
class DefaultAuthorizer:
    """The binding's own rules, with no credentials: ``X-M2M-Origin`` names the originator
    (400 for an empty or multi-valued header); no header leaves the connection unbound, so it
    may only register an AE. Any claim is accepted, as ACME does."""

    def authorize(self, handshake: Handshake) -> Authorization:
        return Authorization(origin_header(handshake.headers))


@implementer(IHandshakeAuthorizer)
class CredentialAuthorizer:
    """Basic and Bearer credentials binding originators (see the module)."""

    def __init__(
        self,
        basic: Sequence[Credential] = (),
        tokens: Sequence[Credential] = (),
        *,
        admin: str = "CAdmin",
        defer_to_thread: Callable[..., Deferred[Any]] | None = None,
        certificates: bool = False,
        owner_of: Callable[[str], str | None] | None = None,
        limits: LoginLimits | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param defer_to_thread: runs a scrypt check off the reactor thread
            (``twisted.internet.threads.deferToThread``); None runs it inline (tests). The
            checks waiting or running are bounded per client address and in all
            (``limits``): past either bound an attempt is refused at once, 503 with
            ``Retry-After``, so that one address's flood leaves room for the others.
        @param certificates: a connection with a (verified) TLS client certificate may claim
            exactly the originators the certificate names (subject CN, SAN URIs), without
            any other credential.
        @param owner_of: the owner (:attr:`Credential.owner`) of a registered AE-ID, or None.
            The CSE keeps it with the AE (:meth:`acmews.cse.CSE.owner_of`): the decision's
            ``owner`` reaches it through the connection, so the binding is written with the
            AE, survives a restart with a durable store and ends with the AE. Without it no
            AE-ID is bound to a credential.
        @param limits: the bounds on failed logins and on checks waiting (defaults when
            None).
        @param clock: times failed logins (a wrong password, an unknown user or token), per
            user name and per client address: after ``limits.free_failures`` of them, the
            attempts for that name or from that address are refused at once, 429 with
            ``Retry-After``, for a while that doubles with each further failure (1 s to
            60 s by default); a successful login clears its user's count. None: failures
            are not counted (tests).
        """
        self._certificates = certificates
        self._users = {c.name: c for c in basic}
        self._tokens = list(tokens)
        self._admin = admin
        self._defer_to_thread = defer_to_thread
        self._limits = limits = limits if limits is not None else LoginLimits()
        #: the scrypt checks waiting or running, per client address and in all
        self.checks = CheckSlots(limits.checks_per_address, limits.checks)
        #: failed logins per user name and per client address
        self.failures_by_user = Backoff(limits, clock) if clock is not None else None
        self.failures_by_address = Backoff(limits, clock) if clock is not None else None
        self._owner_of: Callable[[str], str | None] = owner_of if owner_of is not None else _nobody
        #: with any scrypt entry, every Basic check costs one scrypt (a SHA-256 user's pays
        #: one against the dummy): known users of either kind and unknown ones take the same
        #: time (before: 1.3 ms for a SHA-256 user, 36 ms for an unknown one)
        self._pad = _DUMMY if any(c.secret.startswith("scrypt$") for c in basic) else None
        #: what an unknown user's password is checked against, as dear as the users' own
        self._dummy = self._pad or "0" * 64  # a SHA-256 hex no password has
        #: patterns some credential lists: a credential without a list may not claim them
        self._listed = [p for c in (*basic, *tokens) if c.originators for p in c.originators]

    def authorize(self, handshake: Handshake) -> Deferred[Authorization] | Authorization:
        originator = origin_header(handshake.headers)
        if self._certificates and handshake.peer_certificate is not None:
            names = certificate_names(handshake.peer_certificate)
            if originator is not None and originator not in names:
                raise HandshakeRefused(403, "Forbidden")
            return Authorization(originator, verified=originator is not None)
        address = _address(handshake.peer)
        header = handshake.headers.get("authorization", "")
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            self._not_throttled(address, None)
            token = value.strip()
            found = None
            for credential in self._tokens:  # every one compared: constant time
                if hmac.compare_digest(credential.secret.encode(), token.encode()):
                    found = credential
            if found is None:
                self._failed(address, None)
                raise _unauthorized()
            return self._claim(found, originator)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise _unauthorized() from None
            user, sep, password = decoded.partition(":")
            name = user if sep else None
            self._not_throttled(address, name)
            known = self._users.get(user) if sep else None
            # an unknown user costs what a known one does: no user list by timing
            stored = self._dummy if known is None else known.secret
            pad = None if stored.startswith("scrypt$") else self._pad
            if self._pad is not None and self._defer_to_thread is not None:
                d = self._off_thread(address, password, stored, pad)
                return d.addCallback(self._checked, known, originator, address, name)
            ok = _verify_padded(password, stored, pad)
            return self._checked(ok, known, originator, address, name)
        raise _unauthorized()

    def _not_throttled(self, address: str, user: str | None) -> None:
        """Refuse (429) an attempt from an address or for a user name that failed too often
        lately, without checking it: guessing slows down to a few tries a minute."""
        by_address, by_user = self.failures_by_address, self.failures_by_user
        if by_address is None or by_user is None:
            return
        wait = max(by_address.wait(address), by_user.wait(user) if user is not None else 0.0)
        if wait > 0:
            retry = str(max(1, math.ceil(wait)))
            raise HandshakeRefused(429, "Too Many Requests", {"Retry-After": retry})

    def _failed(self, address: str | None, user: str | None) -> None:
        if self.failures_by_address is not None and address is not None:
            self.failures_by_address.failed(address)
        if self.failures_by_user is not None and user is not None:
            self.failures_by_user.failed(user)

    def _off_thread(
        self, address: str, password: str, stored: str, pad: str | None
    ) -> Deferred[bool]:
        """The check in a thread, within the bounds on checks waiting (503 past them)."""
        assert self._defer_to_thread is not None
        checks = self.checks
        if not checks.take(address):
            raise HandshakeRefused(503, "Service Unavailable", {"Retry-After": "1"})

        def done(result: object) -> object:
            checks.give_back(address)
            return result

        try:
            d: Deferred[bool] = self._defer_to_thread(_verify_padded, password, stored, pad)
        except BaseException:
            checks.give_back(address)
            raise
        d.addBoth(done)
        return d

    def _checked(
        self,
        ok: bool,
        credential: Credential | None,
        originator: str | None,
        address: str | None = None,
        user: str | None = None,
    ) -> Authorization:
        if not ok or credential is None:
            self._failed(address, user)
            raise _unauthorized()
        if self.failures_by_user is not None:
            self.failures_by_user.succeeded(credential.name)
        return self._claim(credential, originator)

    def _claim(self, credential: Credential, originator: str | None) -> Authorization:
        may_hold = partial(self._may_hold, credential)
        if originator is None:
            # it may register an AE, with an AE-ID its credential may hold
            return Authorization(None, credential.owner, may_hold=may_hold)
        owner = self._owner_of(originator)
        if owner is not None:
            allowed = verified = owner == credential.owner  # registered through it
        else:
            allowed = self._may_hold(credential, originator)
            verified = credential.originators is not None and allowed
        if not allowed:
            raise HandshakeRefused(403, "Forbidden")
        return Authorization(originator, credential.owner, verified=verified, may_hold=may_hold)

    def _may_hold(self, credential: Credential, originator: str) -> bool:
        """May ``credential`` claim (or register) ``originator``, which no AE holds? What
        its list names; without a list, anything but a CSE-ID (a CSE must be named), the
        admin's and what another credential lists (reserved for it)."""
        if credential.originators is not None:
            return credential.allows(originator)
        return (
            not originator.startswith("/")
            and originator != self._admin
            and not any(fnmatch.fnmatchcase(originator, p) for p in self._listed)
        )


def _address(peer: Any) -> str:
    """The client address a handshake's peer counts as (its host; a UNIX socket's name)."""
    return str(getattr(peer, "host", peer))


def _nobody(originator: str) -> None:
    """No AE-ID is bound to a credential (a CredentialAuthorizer without ``owner_of``)."""
    return None


_HASH_USAGE = (
    "usage: python -m acmews.auth hash\n"
    "  prints a salted entry for a --basic-auth-file line (user:ENTRY[:originators]);\n"
    "  the password is asked for on a terminal, else read from the first line of stdin\n"
)


def _main(argv: Sequence[str], stdin: TextIO | None = None) -> int:
    """``python -m acmews.auth hash``: the password from a prompt (asked twice) or from the
    first line of stdin, never from the command line, where ``ps`` and the shell's history
    would show it."""
    if argv[:1] != ["hash"] or len(argv) > 1:
        if argv[:1] == ["hash"]:
            sys.stderr.write(
                "python -m acmews.auth hash: the password is read from a prompt or stdin, "
                "never from the command line (ps and the shell's history would show it)\n"
            )
        sys.stderr.write(_HASH_USAGE)
        return 2
    stdin = sys.stdin if stdin is None else stdin
    if stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            sys.stderr.write("python -m acmews.auth hash: the two passwords differ\n")
            return 1
    else:  # a pipe or a file: no prompt, and no warning that echo cannot be turned off
        password = stdin.readline().rstrip("\r\n")
    if not password:
        sys.stderr.write("python -m acmews.auth hash: an empty password\n")
        return 1
    print(hash_password(password))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
