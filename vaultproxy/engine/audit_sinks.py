"""The supervisor's audit sinks (SPEC §13), wired to the running state: built from ``[audit]``
and ``[telemetry]`` at start, rebuilt when a reload changes them, fed by the supervisor's own
audit log (``AuditLog.taps``) and by every worker's lines (``Supervisor.on_audit_line``),
reported in ``/metrics`` and ``/v1/health``. The webhook's signing key is read from the
unlocked keystore at each send (entry ``audit``, field ``webhook``).

``offer`` is one of the audit log's taps only while a hub exists (sinks are configured): with
none it would be called for every record (twice per proxied request) to do nothing. A rebuild
that makes a hub sets it before it adds the tap, one that drops the hub removes the tap: every
record written while a hub exists is offered to it. The taps list is replaced, not changed in
place, so a record being handed to the taps meanwhile sees either list whole."""

from __future__ import annotations

import logging
import threading

from vaultproxy import sinks
from vaultproxy.audit import status as audit_status
from vaultproxy.ca import trust_with
from vaultproxy.core.state import ProxyState
from vaultproxy.secret import Secret
from vaultproxy.sinks.sender import SinkFailed
from vaultproxy.sinks.webhook import KEY_ENTRY, KEY_FIELD

logger = logging.getLogger(__name__)


class AuditSinks:
    def __init__(self, state: ProxyState) -> None:
        self.state = state
        self.hub: sinks.SinkHub | None = None
        self._built_from: object = None
        self._started = False

    def start(self) -> None:
        self._started = True
        self._rebuild()
        self.state.on_change.append(self._changed)
        audit_status.set_sink_problems(self.problems)

    def offer(self, line: str, pid: int | None = None) -> None:
        hub = self.hub
        if hub is not None:
            hub.offer(line, pid)

    def problems(self) -> list[str]:
        hub = self.hub
        return hub.problems() if hub is not None else []

    def _tap(self, on: bool) -> None:
        """``offer`` in the audit log's taps (``on``) or not (``AuditLog.add_tap``/``remove_tap``
        replace the list)."""
        audit = self.state.audit
        if (self.offer in audit.taps) != on:
            if on:
                audit.add_tap(self.offer)
            else:
                audit.remove_tap(self.offer)

    def stop(self, timeout: float = 2.0) -> None:
        """Give the queues ``timeout`` seconds to drain; what is left is counted as dropped."""
        self._started = False
        self._tap(False)
        if self._changed in self.state.on_change:
            self.state.on_change.remove(self._changed)
        audit_status.set_sink_problems(None)
        hub, self.hub = self.hub, None
        if hub is not None:
            hub.stop(timeout)
            for name, s in hub.stats().items():
                logger.warning("audit sink %s: %d record(s) sent, %d retried, %d dropped",
                               name, s["sent"], s["retried"], s["dropped"])
        sinks.bind(None)

    def _changed(self) -> None:
        config = self.state.registry.config
        if (config.audit, config.telemetry) != self._built_from:
            self._rebuild()

    def _rebuild(self) -> None:
        config = self.state.registry.config
        self._built_from = (config.audit, config.telemetry)
        home = self.state.home
        audit = config.audit
        try:
            hub = sinks.build(audit, config.telemetry, self._key,
                              lambda: trust_with(home, audit.ca_cert, "audit"))
        except Exception as e:  # noqa: BLE001 - a sink that cannot be built must not stop a run
            logger.error("audit sinks not started: %s", type(e).__name__)
            hub = None
        old, self.hub = self.hub, hub
        if hub is not None:
            hub.start()
            names = [s.name for s in hub.all]
            logger.info("audit sinks: %s", ", ".join(names))
        if self._started:
            self._tap(hub is not None)  # (after ``self.hub`` is set: no record missed)
        sinks.bind(hub)
        if old is not None:  # let it drain without holding up the reload
            threading.Thread(target=old.stop, name="audit-sinks-retire", daemon=True).start()

    def _key(self) -> Secret:
        ks = self.state.session.keystore
        if ks is None:
            raise SinkFailed("webhook: the keystore is locked (no signing key)")
        entry = ks.get(KEY_ENTRY)
        value = entry.fields.get(KEY_FIELD) if entry is not None else None
        if value is None:
            raise SinkFailed(f"webhook: no signing key (keystore entry {KEY_ENTRY}, field "
                             f"{KEY_FIELD}: `vaultproxy secret set {KEY_ENTRY} --field "
                             f"{KEY_FIELD}`)")
        return value

