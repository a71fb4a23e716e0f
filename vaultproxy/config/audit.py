"""``[audit]`` in services.toml: what happens when ``audit.jsonl`` cannot be written (disk
full, read-only file system, quota), and where else every record goes (SPEC §13).

```toml
[audit]
on_failure = "deny"       # default: a request that would carry a credential is refused
                          # (503 audit_unavailable) rather than forwarded unaudited
# on_failure = "continue" # keep injecting unaudited (a SECURITY line at every start)
sinks = ["syslog", "webhook", "otlp", "stdout"]  # in addition to audit.jsonl (always)
syslog = "unix:/dev/log"  # or udp://HOST:PORT, tcp://HOST:PORT (RFC 5424)
webhook_url = "https://siem.example/vaultproxy"  # key: keystore entry audit, field webhook
allow_loopback = false    # the sinks' egress policy, as for a service
allow_private = false
ca_cert = "siem-ca.pem"   # extra trust anchor for webhook/otlp (relative to the home)
```

``[telemetry] traces = true`` exports one OpenTelemetry span per proxied request.
"""

from __future__ import annotations

from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import StrictBool, ValidationInfo, field_validator, model_validator

from vaultproxy.config.fields import Model, StrList, ca_file, choice
from vaultproxy.config.problems import Problems
from vaultproxy.config.rules import RuleViolation, check_address, one_of
from vaultproxy.net import egress

OnFailure = Literal["deny", "continue"]
SinkName = Literal["stdout", "syslog", "otlp", "webhook"]
SINK_NAMES: tuple[str, ...] = get_args(SinkName)
DEFAULT_SYSLOG = "unix:/dev/log"
SYSLOG_FORMS = "must be unix:/PATH, udp://HOST:PORT or tcp://HOST:PORT"


def split_syslog(value: str) -> tuple[str, str, int]:
    """``(scheme, host or socket path, port)``; ValueError naming the accepted forms."""
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError("unix: needs an absolute socket path (unix:/dev/log)")
        return "unix", path, 0
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(SYSLOG_FORMS) from None
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or port is None:
        raise ValueError(SYSLOG_FORMS)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(SYSLOG_FORMS + " (no path, query or user)")
    if port == 0:
        raise ValueError("must not use port 0")
    return parts.scheme, parts.hostname, port


def split_webhook(value: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an https:// URL, or http:// to a loopback IP literal."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("must be an https:// URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("must be an https:// URL")
    if parts.username or parts.password or parts.fragment:
        raise ValueError("must have no credentials or fragment")
    if port == 0:
        raise ValueError("must not use port 0")
    if parts.scheme == "http":
        ip = egress.parse_ip(parts.hostname)
        if ip is None or not ip.is_loopback:
            raise ValueError("plain http:// is only allowed to a loopback IP "
                             "(http://127.0.0.1:PORT/...); use https://")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


class AuditSettings(Model):
    """``[audit]``: the audit trail's failure policy (audit/log.py applies it) and its sinks
    (vaultproxy/sinks/)."""

    on_failure: OnFailure = "deny"
    sinks: StrList = ()
    syslog: str = DEFAULT_SYSLOG
    webhook_url: str | None = None
    allow_loopback: StrictBool = False
    allow_private: StrictBool = False
    ca_cert: str | None = None

    @field_validator("on_failure", mode="before")
    @classmethod
    def _on_failure(cls, value: object) -> object:
        return choice(value, get_args(OnFailure))

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[tuple[str, str]] = []
        for i, name in enumerate(value):
            if name not in SINK_NAMES:
                problems.append((f"[{i}]", one_of(SINK_NAMES)))
            elif name in value[:i]:
                problems.append((f"[{i}]", f'"{name}" is listed twice'))
        if problems:
            raise Problems(problems)
        return value

    @field_validator("syslog")
    @classmethod
    def _syslog(cls, value: str) -> str:
        try:
            split_syslog(value)
        except ValueError as e:
            raise Problems.one(str(e)) from None
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                split_webhook(value)
            except ValueError as e:
                raise Problems.one(str(e)) from None
        return value

    @field_validator("ca_cert")
    @classmethod
    def _ca_cert(cls, value: str, info: ValidationInfo) -> str:
        return ca_file(value, info, empty="must be a non-empty file name")

    @model_validator(mode="after")
    def _endpoints(self) -> AuditSettings:
        """The sinks' fixed addresses obey the egress policy now; names are checked again
        when resolved (vaultproxy/sinks/egress.py)."""
        ctx = self.address_context()
        problems: list[tuple[str, str]] = []
        if "webhook" in self.sinks and self.webhook_url is None:
            problems.append((".webhook_url", 'is required when sinks lists "webhook"'))
        if "syslog" in self.sinks:
            scheme, host, port = split_syslog(self.syslog)
            if scheme != "unix":
                problems += _address(".syslog", host, port, ctx)
        if "webhook" in self.sinks and self.webhook_url is not None:
            _, host, port = split_webhook(self.webhook_url)
            problems += _address(".webhook_url", host, port, ctx)
        if problems:
            raise Problems(problems)
        return self

    def address_context(self) -> egress.AddressContext:
        return egress.AddressContext(allow_private=self.allow_private,
                                     allow_loopback=self.allow_loopback)


def _address(field: str, host: str, port: int, ctx: egress.AddressContext) -> list[tuple[str, str]]:
    try:
        check_address(host, port, ctx)
    except RuleViolation as e:
        return [(field, str(e))]
    return []


class TelemetrySettings(Model):
    """``[telemetry]``: ``traces = true`` exports one span per proxied request over OTLP/HTTP
    (``OTEL_EXPORTER_OTLP_*``; vaultproxy/sinks/otlp.py)."""

    traces: StrictBool = False
