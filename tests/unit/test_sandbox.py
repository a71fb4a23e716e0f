"""The sandbox's pure parts: the bubblewrap command line, the seccomp program, the
environment rewrite, status encoding and the runtime warning's version rule."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vaultproxy.cli.env_exec import loopback_url
from vaultproxy.sandbox import bwrap, inner, launch, seccomp
from vaultproxy.sandbox.runtimes import node_ignores_proxy, parse_version

LAYOUT = bwrap.Layout(hide_dirs=("/h",), hide_files=("/pw",), read_only=("/venv",),
                      files_dir="/tmp/d")


def _command(share_net: bool = False) -> list[str]:
    return bwrap.command("bwrap", LAYOUT, share_net=share_net, python="/py", spec_fd=5,
                         ctl_fd=6, broker_fd=8, cwd="/w", seccomp_fd=7)


def test_command_isolates_by_default() -> None:
    argv = _command()
    for flag in ("--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-net",
                 "--die-with-parent"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--tmpfs") + 1] == "/h"
    assert argv[argv.index("--seccomp") + 1] == "7"
    assert ["--ro-bind", "/dev/null", "/pw"] == argv[argv.index("/pw") - 2:argv.index("/pw") + 1]
    assert not [a for a in argv if "proxy.sock" in a]  # no path to the proxy inside
    # the host's /dev is not bound (no raw disks, no other terminals)
    assert "--dev-bind" not in argv and argv[argv.index("--dev") + 1] == "/dev"
    # the hiding mounts come after the root bind, so they cover it
    assert argv.index("--bind") < argv.index("--tmpfs")
    assert argv[argv.index("/venv") - 1:argv.index("/venv") + 2] == ["--ro-bind", "/venv",
                                                                     "/venv"]
    assert argv[-7:] == ["/py", "-P", "-m", "vaultproxy.sandbox.inner", "5", "6", "8"]


def test_old_bubblewrap_without_disable_userns_still_drops_everything() -> None:
    argv = bwrap.namespace_args(share_net=False, disable_userns=False)
    assert "--disable-userns" not in argv
    assert "--unshare-user" in argv and argv[argv.index("--cap-drop") + 1] == "ALL"


def test_share_net_keeps_everything_but_the_network_namespace() -> None:
    argv = _command(share_net=True)
    assert "--unshare-net" not in argv
    assert "--unshare-user" in argv and "--tmpfs" in argv


def test_hidden_paths_include_the_resolved_home(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert bwrap.hidden_paths(link) == (str(link), str(real))
    assert bwrap.hidden_paths(real) == (str(real),)


def test_own_code_is_listed_read_only() -> None:
    import sys

    import vaultproxy

    paths = bwrap.own_code()
    for p in (Path(vaultproxy.__file__).parent, Path(sys.prefix)):
        assert any(p.resolve().is_relative_to(o) for o in paths), p
    assert "/" not in paths


def test_seccomp_program_is_well_formed() -> None:
    for machine in ("x86_64", "aarch64"):
        raw = seccomp.program(machine)
        assert raw is not None and len(raw) % 8 == 0
        insns = [struct.unpack("=HBBI", raw[i:i + 8]) for i in range(0, len(raw), 8)]
        assert insns[-1] == (0x06, 0, 0, seccomp.SECCOMP_RET_ERRNO | seccomp.EPERM)
        assert insns[-2] == (0x06, 0, 0, seccomp.SECCOMP_RET_ALLOW)
        for pc, (code, jt, jf, _k) in enumerate(insns):
            if code == 0x15:  # every jump lands inside the program
                assert pc + 1 + max(jt, jf) < len(insns)
        compared = {k for code, _, _, k in insns if code == 0x15}
        assert {seccomp.TIOCSTI, seccomp.TIOCLINUX, seccomp.AF_UNIX} <= compared
    assert seccomp.program("riscv64") is None


def test_sandbox_env_points_the_ca_variables_at_the_sandbox_copies() -> None:
    req = launch.Request(
        argv=["x"], env={"SSL_CERT_FILE": "/h/ca-bundle.pem", "NODE_EXTRA_CA_CERTS": "/h/ca.crt",
                         "OTHER": "/h/ca.crt-not"},
        outer_env={}, home=Path("/h"), bundle=Path("/h/ca-bundle.pem"),
        ca_cert=Path("/h/ca.crt"), proxy_socket=None, proxy_port=1,
    )
    env = launch.sandbox_env(req, Path("/tmp/d"))
    assert env == {"SSL_CERT_FILE": "/tmp/d/ca-bundle.pem",
                   "NODE_EXTRA_CA_CERTS": "/tmp/d/ca.crt", "OTHER": "/h/ca.crt-not"}


@pytest.mark.parametrize(("status", "line"), [
    (0, b"exit 0\n"), (7 << 8, b"exit 7\n"), (15, b"signal 15\n"), (2 | 0x80, b"signal 2\n"),
])
def test_status_encoding(status: int, line: bytes) -> None:
    assert inner.encode_status(status) == line


def test_exit_status_is_returned() -> None:
    assert launch.end_like("exit 3") == 3
    assert launch.end_like("exit 0") == 0


def test_spec_roundtrip() -> None:
    spec = inner.Spec.parse(b'{"argv": ["a", "b"], "env": {"K": "v"}, "listen": '
                            b'["127.0.0.1", 3203]}')
    assert spec == inner.Spec(["a", "b"], {"K": "v"}, ("127.0.0.1", 3203))
    fd = launch.memfd("t", b'{"argv": ["a"], "env": {}, "listen": null}')
    assert inner.read_spec(fd).listen is None
    with pytest.raises(OSError):
        os.fstat(fd)  # read once and closed


def test_loopback_url_is_the_forwarders_address_with_the_same_port() -> None:
    assert loopback_url("http://0.0.0.0:3203", 3203) == "http://127.0.0.1:3203"
    assert loopback_url("http://[::1]:9", 9) == "http://127.0.0.1:9"


@pytest.mark.parametrize(("text", "ignores"), [
    ("v20.20.2", True), ("v18.19.0", True), ("v22.20.0", True), ("v22.21.0", False),
    ("v24.1.0", False), ("v23.11.0", True),
])
def test_node_version_rule(text: str, ignores: bool) -> None:
    version = parse_version(text)
    assert version is not None and node_ignores_proxy(version) is ignores


def test_unavailable_message_names_package_and_both_flags() -> None:
    msg = str(bwrap.unavailable("bwrap missing"))
    for word in ("bubblewrap", "--share-net", "--no-isolate", "apt install bubblewrap"):
        assert word in msg
