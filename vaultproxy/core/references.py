"""Does the keystore hold what each service needs? Pure: a Config and a Keystore in,
problems out (secret *names* and field names only, never values).

Used by `vaultproxy check` (exit 1) and by the running proxy, which warns at start, on
reload and on unlock instead of answering ``502 secret_missing`` without notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vaultproxy.config.models import Config
from vaultproxy.config.refs import is_ref
from vaultproxy.config.signed import FIELDS as SIGNED_FIELDS
from vaultproxy.errors import SecretMissing
from vaultproxy.keystore.cached import cached_entry, ref_of

if TYPE_CHECKING:
    from vaultproxy.keystore import Entry, Keystore

BASIC_FIELDS = ("username", "password")


def minted_needs(auth: str) -> tuple[str, ...] | None:
    """The keystore fields a minted auth type needs (SPEC §4.1), None for the others."""
    from vaultproxy.mint.base import NEEDS  # importing vaultproxy.mint registers every type

    return NEEDS.get(auth)


@dataclass(frozen=True)
class SecretProblem:
    index: int  # position of the service in services.toml
    service: str
    secret: str
    message: str

    @property
    def line(self) -> str:
        """`vaultproxy check`'s ``path: message`` form."""
        return f'service "{self.service}" (service[{self.index}]).secret: {self.message}'

    @property
    def fix(self) -> str:
        """What to run, in words (a synced secret is fixed by a sync, which applies at once)."""
        if is_ref(self.secret):
            return f"run `vaultproxy sync {ref_of(self.secret).source}`"
        return (f"run `vaultproxy secret set {self.secret}` (add --field for basic auth; a "
                "running proxy uses it at once)")


def secret_problems(cfg: Config, keystore: Keystore) -> list[SecretProblem]:
    """Every service whose keystore entry is missing or lacks what its auth type needs."""
    names = set(keystore.names())
    problems = []
    for i, svc in enumerate(cfg.services):
        secret = svc.secret_name

        def add(message: str, svc_name: str = svc.name, secret: str = secret,
                i: int = i) -> None:
            problems.append(SecretProblem(i, svc_name, secret, message))

        if is_ref(secret):  # "SOURCE:PATH#FIELD": what the last sync cached (SPEC §9)
            try:
                entry: Entry | None = cached_entry(keystore, ref_of(secret), svc.name)
            except SecretMissing as e:
                add(str(e).split(": ", 1)[-1])  # without the "service NAME: " prefix
                continue
            what = f'the synced item "{secret}"'
        elif secret not in names:
            add(f'keystore has no entry named "{secret}"')
            continue
        else:
            entry = keystore.get(secret)
            what = f'keystore entry "{secret}"'
        fields = entry.fields if entry is not None else {}
        needs = minted_needs(svc.auth)
        if needs is not None:
            missing = [f for f in needs if f not in fields]
            if missing:
                add(f'{what} lacks field(s) {", ".join(missing)} '
                    f'(auth = "{svc.auth}" needs {", ".join(needs)})')
        elif svc.auth == "basic":
            missing = [f for f in BASIC_FIELDS if f not in fields]
            if missing:
                add(f'{what} lacks field(s) {", ".join(missing)} '
                    '(auth = "basic" needs username and password)')
        elif svc.auth in SIGNED_FIELDS:  # SPEC §4.1 types whose entry holds named fields
            needed = SIGNED_FIELDS[svc.auth]
            missing = [f for f in needed if f not in fields]
            if missing:
                add(f'{what} lacks field(s) {", ".join(missing)} '
                    f'(auth = "{svc.auth}" needs {", ".join(needed)})')
        elif entry is None or entry.value is None:
            add(f'{what} has no value (only fields); auth = "{svc.auth}" needs a value'
                + (" (name one with #FIELD)" if is_ref(secret) else ""))
    return problems


def warning_lines(problems: list[SecretProblem]) -> list[str]:
    """One log line per problem, naming the service, the symptom and the fix."""
    return [
        f"service {p.service}: {p.message}; its requests will fail with 502 secret_missing "
        f"until you {p.fix}"
        for p in problems
    ]


# What each source's keystore entry source.NAME must hold, per auth (SPEC §9).
SOURCE_FIELDS = {"token": ("token",), "approle": ("role_id", "secret_id"),
                 "password": ("email", "password"),
                 "apikey": ("client_id", "client_secret", "password")}


def source_credential_problems(cfg: Config, keystore: Keystore) -> list[str]:
    """``source[i]: ...`` for every source whose credentials entry lacks what it logs in with."""
    out = []
    for i, src in enumerate(cfg.sources):
        name = f"source.{src.name}"
        entry = keystore.get(name)
        have = entry.fields if entry is not None else {}
        missing = [f for f in SOURCE_FIELDS[src.auth] if f not in have]
        if missing:
            out.append(f'source "{src.name}" (source[{i}]): keystore entry "{name}" lacks field(s) '
                       f'{", ".join(missing)} (auth = "{src.auth}"; `vaultproxy secret set '
                       f'{name} --field {missing[0]}`)')
    return out
