"""The pieces of `--workers N` on their own: channel framing, the keystore view a worker
serves from, applying a state message, the supervisor's audit intake, the one-proxy-per-home
claim. The whole thing runs for real in tests/integration/test_workers.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from pathlib import Path

import pytest

from tests.canary import make_canary
from tests.harness.proxy import cheap_kdf_floor
from vaultproxy.access.agents import entry_name, make_record, new_token
from vaultproxy.audit import AuditEvent, AuditLog
from vaultproxy.core.state import ProxyState
from vaultproxy.engine.channel import ChannelClosed, frame, read_frame
from vaultproxy.engine.worker import apply_state
from vaultproxy.engine.worker_audit import WorkerAudit
from vaultproxy.errors import KeystoreError, VaultproxyError
from vaultproxy.files.home import Home
from vaultproxy.keystore import KdfParams, Keystore
from vaultproxy.secret import Secret

FAST = KdfParams(time_cost=1, memory_kib=8, parallelism=1)


def _read(data: bytes) -> tuple[dict[str, object], bytearray]:
    async def go() -> tuple[dict[str, object], bytearray]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_frame(reader)

    return asyncio.run(go())


def test_frame_round_trip_keeps_header_and_binary_payload() -> None:
    payload = bytes(range(256)) * 3
    header, got = _read(frame({"op": "state", "n": 7}, payload))
    assert header == {"op": "state", "n": 7}
    assert isinstance(got, bytearray) and bytes(got) == payload


@pytest.mark.parametrize(
    "data",
    [
        b"",  # nothing at all
        frame({"op": "ping"})[:-1],  # truncated header
        frame({"op": "audit"}, b"x" * 10)[:-3],  # truncated payload
        struct.pack("!II", 1 << 21, 0),  # oversized header length
        struct.pack("!II", 2, 65 << 20) + b"{}",  # oversized payload length
        struct.pack("!II", 2, 0) + b"[]",  # header is not an object
        struct.pack("!II", 11, 0) + b'{"op": 1 }',  # op is not a string
        struct.pack("!II", 3, 0) + b"{x}",  # not JSON
    ],
)
def test_malformed_frames_close_the_channel(data: bytes) -> None:
    with pytest.raises(ChannelClosed):
        _read(data)


def _keystore(tmp_path: Path, value: str) -> Keystore:
    ks = Keystore.create(tmp_path / "keystore.enc", Secret("pw-for-unit-tests"), kdf=FAST)
    ks.set_value("svc", Secret(value))
    ks.set_field("basic", "password", Secret(value + "-f"))
    record = make_record("bot", new_token(), ["svc"], 0.0)
    ks.set_internal(entry_name("bot"), record.encode())
    with cheap_kdf_floor():  # not a KDF test: no ~0.2 s Argon2id raise on save
        ks.save()
    return ks


def test_a_keystore_view_reads_like_the_original_and_cannot_write(tmp_path: Path) -> None:
    value = make_canary()
    ks = _keystore(tmp_path, value)
    plain = ks.plaintext()
    view = Keystore.view(ks.path, plain)
    assert view.names() == ks.names() == ["basic", "svc"]
    entry = view.get("svc")
    assert entry is not None and entry.value is not None
    assert entry.value.reveal() == value.encode()
    assert view.get_internal(entry_name("bot")) is not None
    assert value not in repr(view)
    before = ks.path.read_bytes()
    for write in (view.save, lambda: view.change_password(Secret("other-password"))):
        with pytest.raises(KeystoreError, match="read-only view"):
            write()
    assert ks.path.read_bytes() == before  # the file was not touched


def _state(tmp_path: Path, services: str = "") -> ProxyState:
    home = Home(tmp_path / "home")
    home.path.mkdir(mode=0o700)
    (home.path / "services.toml").write_text(services)
    return ProxyState.load(home)


SERVICE = """
[[service]]
name = "svc"
hosts = ["svc.example.com"]
mode = "host_inject"
auth = "bearer"
"""


def test_apply_state_installs_registry_keystore_and_lock(tmp_path: Path) -> None:
    value = make_canary()
    ks = _keystore(tmp_path, value)
    st = _state(tmp_path)
    assert st.locked and st.registry.services == ()
    payload = ks.plaintext()
    header = {"op": "state", "config": SERVICE, "own": [["127.0.0.1", 3203]], "locked": False}
    apply_state(st, header, payload)
    assert [s.name for s in st.registry.services] == ["svc"]
    assert st.own_listeners == frozenset({("127.0.0.1", 3203)})
    entry = st.session.entry_for(st.registry.services[0])
    assert entry.value is not None and entry.value.reveal() == value.encode()
    assert "bot" in st.session.agents
    assert not any(payload)  # the received plaintext was wiped
    # A later "locked" message drops the secrets (the negative twin).
    apply_state(st, {**header, "locked": True}, bytearray())
    assert st.locked and st.session.redactor_for(st.registry.services[0]) is None


def test_apply_state_with_a_bad_config_keeps_the_old_registry(tmp_path: Path) -> None:
    st = _state(tmp_path, SERVICE)
    bad = {"op": "state", "config": "[[service]]\nname = 42\n", "own": [], "locked": True}
    with pytest.raises(VaultproxyError):
        apply_state(st, bad, bytearray())
    assert [s.name for s in st.registry.services] == ["svc"]


def test_every_state_change_is_announced(tmp_path: Path) -> None:
    ks = _keystore(tmp_path, make_canary())
    st = _state(tmp_path, SERVICE)
    seen: list[int] = []
    st.on_change.append(lambda: seen.append(st.generation))
    st.install_keystore(ks)
    st.secrets_changed()
    st.reload_text(SERVICE)
    st.set_own_listeners(frozenset({("127.0.0.1", 1)}))
    st.lock()
    assert seen == [1, 2, 3, 4, 5]


def test_supervisor_audit_intake_writes_good_lines_and_drops_malformed(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    good = AuditEvent(event="request", outcome="injected", service="svc").to_json_line()
    for line in (good, "not json\n", good.rstrip("\n"), '{"a":1}\n{"b":2}\n'):
        log.record_line(line)
    log.flush()
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["service"] for x in lines] == ["svc"]
    assert log.dropped == 3


def test_worker_audit_writes_the_file_and_sends_each_record_as_one_frame(
    tmp_path: Path,
) -> None:
    async def go() -> list[tuple[dict[str, object], bytearray]]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        _, writer = await asyncio.open_unix_connection(sock=a)
        reader, _w2 = await asyncio.open_unix_connection(sock=b)
        fwd = WorkerAudit(tmp_path / "audit.jsonl", writer, loop)
        fwd.record(AuditEvent(event="request", outcome="denied", reason="locked"))
        await asyncio.to_thread(fwd.record, AuditEvent(event="request", outcome="injected"))
        out = [await read_frame(reader), await read_frame(reader)]
        writer.close()
        _w2.close()
        return out

    frames = asyncio.run(go())
    assert [h["op"] for h, _ in frames] == ["audit", "audit"]
    assert [json.loads(p)["outcome"] for _, p in frames] == ["denied", "injected"]
    # Written by the worker itself, in order: nothing depends on the supervisor being alive.
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x)["outcome"] for x in lines] == ["denied", "injected"]


def test_one_proxy_per_home(tmp_path: Path) -> None:
    home = Home(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"pid": 4242}))
    fd = home.claim()
    try:
        with pytest.raises(VaultproxyError, match=r"another vaultproxy \(pid 4242\) is already"):
            home.claim()
    finally:
        os.close(fd)
    os.close(home.claim())  # released with its fd


def test_worker_audit_reports_a_health_change_to_the_supervisor(tmp_path: Path) -> None:
    """A worker whose audit writes fail says so at once (``audit_state``), for /v1/health."""

    async def go() -> list[tuple[dict[str, object], bytearray]]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        _, writer = await asyncio.open_unix_connection(sock=a)
        reader, _w2 = await asyncio.open_unix_connection(sock=b)
        audit = WorkerAudit(tmp_path / "not-yet" / "audit.jsonl", writer, loop)
        assert audit.record(AuditEvent(event="request", outcome="injected")) is False
        (tmp_path / "not-yet").mkdir()
        assert audit.record(AuditEvent(event="request", outcome="injected")) is True
        out = [await read_frame(reader) for _ in range(4)]
        writer.close()
        _w2.close()
        return out

    frames = asyncio.run(go())
    assert [h["op"] for h, _ in frames] == ["audit", "audit_state", "audit", "audit_state"]
    down, up = frames[1][0]["audit"], frames[3][0]["audit"]
    assert down["healthy"] is False and "FileNotFoundError" in down["error"]  # type: ignore[index,operator]
    assert up["healthy"] is True and up["written"] == 2 and up["failed"] == 1  # type: ignore[index]
