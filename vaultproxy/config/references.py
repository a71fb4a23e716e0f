"""Does the keystore hold what each service needs? Pure: a Config and a Keystore in,
problems out (secret *names* and field names only, never values).

Used by `vaultproxy check` (exit 1) and by the running proxy, which warns at start, on
reload and on unlock instead of answering ``502 secret_missing`` without notice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vaultproxy.config.models import Config
from vaultproxy.config.signed import FIELDS as SIGNED_FIELDS

if TYPE_CHECKING:
    from vaultproxy.keystore import Keystore

BASIC_FIELDS = ("username", "password")


@dataclass(frozen=True)
class SecretProblem:
    index: int  # position of the service in services.toml
    service: str
    secret: str
    message: str

    @property
    def line(self) -> str:
        """`vaultproxy check`'s ``path: message`` form."""
        return f"service[{self.index}].secret: {self.message}"

    @property
    def fix(self) -> str:
        return f"vaultproxy secret set {self.secret}"


def secret_problems(cfg: Config, keystore: Keystore) -> list[SecretProblem]:
    """Every service whose keystore entry is missing or lacks what its auth type needs."""
    names = set(keystore.names())
    problems = []
    for i, svc in enumerate(cfg.services):
        secret = svc.secret_name

        def add(message: str, svc_name: str = svc.name, secret: str = secret,
                i: int = i) -> None:
            problems.append(SecretProblem(i, svc_name, secret, message))

        if secret not in names:
            add(f'keystore has no entry named "{secret}"')
            continue
        entry = keystore.get(secret)
        fields = entry.fields if entry is not None else {}
        if svc.auth == "basic":
            missing = [f for f in BASIC_FIELDS if f not in fields]
            if missing:
                add(f'keystore entry "{secret}" lacks field(s) {", ".join(missing)} '
                    '(auth = "basic" needs username and password)')
        elif svc.auth in SIGNED_FIELDS:  # SPEC §4.1 types whose entry holds named fields
            needed = SIGNED_FIELDS[svc.auth]
            missing = [f for f in needed if f not in fields]
            if missing:
                add(f'keystore entry "{secret}" lacks field(s) {", ".join(missing)} '
                    f'(auth = "{svc.auth}" needs {", ".join(needed)})')
        elif entry is None or entry.value is None:
            add(f'keystore entry "{secret}" has no value (only fields); '
                f'auth = "{svc.auth}" needs a value')
    return problems


def warning_lines(problems: list[SecretProblem]) -> list[str]:
    """One log line per problem, naming the service, the symptom and the fix."""
    return [
        f"service {p.service}: {p.message}; its requests will fail with 502 secret_missing "
        f"until you run `{p.fix}` (add --field for basic auth) and `vaultproxy reload`"
        for p in problems
    ]
