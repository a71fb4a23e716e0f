"""The sandbox's pure parts: the bubblewrap command line, the seccomp program, the
environment rewrite, status encoding and the runtime warning's version rule."""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import pytest

from vaultproxy.cli.env_exec import loopback_url
from vaultproxy.errors import UsageError
from vaultproxy.sandbox import bwrap, hide, inner, launch, seccomp
from vaultproxy.sandbox.runtimes import node_ignores_proxy, parse_version

LAYOUT = bwrap.Layout(hide_dirs=("/h",), hide_files=("/pw",), read_only=("/venv",),
                      files_dir="/tmp/d", writable=("/w", "/tmp/x"), protected=("/w/.git/hooks",))


def _command(share_net: bool = False) -> list[str]:
    return bwrap.command("bwrap", LAYOUT, share_net=share_net, python="/py", spec_fd=5,
                         ctl_fd=6, broker_fd=8, cwd="/w", seccomp_fd=7)


def test_command_isolates_by_default() -> None:
    argv = _command()
    for flag in ("--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-net",
                 "--die-with-parent"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("/h") - 1] == "--tmpfs"
    assert argv[argv.index("--seccomp") + 1] == "7"
    assert ["--ro-bind", "/dev/null", "/pw"] == argv[argv.index("/pw") - 2:argv.index("/pw") + 1]
    assert not [a for a in argv if "proxy.sock" in a]  # no path to the proxy inside
    # the host's /dev is not bound (no raw disks, no other terminals)
    assert "--dev-bind" not in argv and argv[argv.index("--dev") + 1] == "/dev"
    # read-only root; then each mount covers what an earlier one shows at that path
    assert argv[argv.index("--ro-bind") + 1:argv.index("--ro-bind") + 3] == ["/", "/"]
    assert "--bind" in argv and ["--bind", "/", "/"] != argv[1:4]
    order = [argv.index(x) for x in ("/proc/sys", "--tmpfs", "/w", "/tmp/x", "/w/.git/hooks",
                                     "/venv", "/h", "/pw", "/tmp/d")]
    assert order == sorted(order)
    assert argv[argv.index("/proc/sys") - 1] == "--ro-bind-try"
    assert argv[argv.index("/proc/sysrq-trigger") - 1] == "--ro-bind-try"
    assert argv[argv.index("--tmpfs") + 1] == "/tmp"  # the private /tmp
    assert argv[argv.index("/w") - 1] == "--bind"
    assert argv[argv.index("/w/.git/hooks") - 1] == "--ro-bind"
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


def test_hidden_paths_are_resolved_targets(tmp_path: Path) -> None:
    """A symlinked home or password file: the target is covered (the link leads to the
    cover); missing paths and paths inside a hidden directory are left out."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "inner").mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw_link = tmp_path / "pw-link"
    pw_link.symlink_to(pw)
    got = hide.resolve([str(link), str(real / "inner"), str(pw_link), str(tmp_path / "no")],
                       expose=())
    assert got == [str(pw), str(real)] or got == [str(real), str(pw)]
    assert hide.resolve([str(link), str(pw)], expose=[str(pw_link)]) == [str(real)]


def test_credential_store_list_follows_the_spec() -> None:
    got = hide.candidates("/home/u", ["/vp"], ["/pw"], ["~/.secret", "/abs"])
    for p in ("/home/u/.ssh", "/home/u/.aws", "/home/u/.netrc", "/home/u/.config/gh",
              "/home/u/.local/share/keyrings", "/home/u/.config/vaultproxy", "/vp", "/pw",
              "/abs"):
        assert p in got
    assert os.path.expanduser("~/.secret") in got


MOUNTINFO = r"""22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 8:1 /home/u/.config/vaultproxy /mnt/alias rw - ext4 /dev/sda1 rw
31 22 8:1 /home /srv/homes rw - ext4 /dev/sda1 rw
32 22 8:1 /home/u/.config/vaultproxy/sub /opt/deep rw - ext4 /dev/sda1 rw
33 22 8:2 / /data rw - ext4 /dev/sdb1 rw
34 22 8:1 /var/with\040space /mnt/sp rw - ext4 /dev/sda1 rw
"""


def test_bind_mount_aliases_are_found_in_mountinfo() -> None:
    mounts = hide.parse_mountinfo(MOUNTINFO)
    assert mounts[-1].point == "/mnt/sp" and mounts[-1].root == "/var/with space"
    got = hide.aliases("/home/u/.config/vaultproxy", mounts)
    assert sorted(got) == ["/mnt/alias", "/opt/deep", "/srv/homes/u/.config/vaultproxy"]
    assert hide.aliases("/data/x", mounts) == []  # another device: no alias
    assert hide.aliases("/var/with space/f", mounts) == ["/mnt/sp/f"]


def test_hard_linked_hidden_files_are_refused(tmp_path: Path) -> None:
    store = tmp_path / ".aws"
    store.mkdir()
    (store / "credentials").write_text("x")
    assert hide.hard_linked([str(store)], ()) == []
    os.link(store / "credentials", tmp_path / "alias")
    found = hide.hard_linked([str(store)], ())
    assert found == [(str(store / "credentials"), 2)]
    with pytest.raises(UsageError, match="--expose"):
        hide.refuse_hard_links(found)
    assert hide.hard_linked([str(store)], [str(store / "credentials")]) == []


def test_working_directory_holding_a_home_stays_read_only(tmp_path: Path) -> None:
    home = tmp_path / "home" / "u"
    home.mkdir(parents=True)
    notes: list[str] = []
    assert bwrap.writable_paths(str(home), [str(home)], (), notes.append) == ()
    assert bwrap.writable_paths(str(tmp_path), [str(home)], (), notes.append) == ()
    assert bwrap.writable_paths("/", [], (), notes.append) == ()
    assert len(notes) == 3 and "--write" in notes[0]
    proj = home / "proj"
    proj.mkdir()
    assert bwrap.writable_paths(str(proj), [str(home)], [str(home)], notes.append) == (
        str(proj), str(home))
    with pytest.raises(UsageError, match="no such"):
        bwrap.writable_paths(str(proj), [], [str(tmp_path / "missing")], notes.append)


def test_git_hooks_and_config_of_a_writable_repository_stay_read_only(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    got = bwrap.protected((str(tmp_path),))
    assert got == (str(tmp_path / ".git" / "hooks"), str(tmp_path / ".git" / "config"))
    assert (tmp_path / ".git" / "hooks").is_dir()  # created, so there is a mount point


def test_own_code_is_listed_read_only() -> None:
    import sys

    import vaultproxy

    paths = bwrap.own_code()
    for p in (Path(vaultproxy.__file__).parent, Path(sys.prefix)):
        assert any(p.resolve().is_relative_to(o) for o in paths), p
    assert "/" not in paths


def _run_bpf(raw: bytes, arch: int, nr: int, args: tuple[int, ...] = ()) -> int:
    """A classic-BPF interpreter for the four instructions the filter uses."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack("=HBBI", raw[i:i + 8]) for i in range(0, len(raw), 8)]
    pc, acc = 0, 0
    for _ in range(len(insns)):
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x05:
            pc += 1 + k
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")
    raise AssertionError("no return")


ALLOW, EPERM = seccomp.SECCOMP_RET_ALLOW, seccomp.SECCOMP_RET_ERRNO | seccomp.EPERM
ENOSYS = seccomp.SECCOMP_RET_ERRNO | seccomp.ENOSYS
X86_64, I386, AARCH64, ARM = 0xC000003E, 0x40000003, 0xC00000B7, 0x40000028
X32 = seccomp.X32_BIT


@pytest.mark.parametrize(("machine", "arch", "nr", "args", "verdict"), [
    ("x86_64", X86_64, 0, (), ALLOW),  # read
    ("x86_64", X86_64, 56, (), ALLOW),  # clone
    ("x86_64", X86_64, 425, (), ENOSYS),  # io_uring_setup
    ("x86_64", X86_64, 426, (), ENOSYS),  # io_uring_enter
    ("x86_64", X86_64, 427, (), ENOSYS),  # io_uring_register
    ("x86_64", X86_64, 250, (), ENOSYS),  # keyctl
    ("x86_64", X86_64, 248, (), ENOSYS),  # add_key
    ("x86_64", X86_64, 165, (), ENOSYS),  # mount
    ("x86_64", X86_64, 272, (), ENOSYS),  # unshare
    ("x86_64", X86_64, 321, (), ENOSYS),  # bpf
    ("x86_64", X86_64, 298, (), ENOSYS),  # perf_event_open
    ("x86_64", X86_64, 41, (1, 1), EPERM),  # socket(AF_UNIX)
    ("x86_64", X86_64, 41, (40, 1), EPERM),  # socket(AF_VSOCK)
    ("x86_64", X86_64, 41, (2, 1), ALLOW),  # socket(AF_INET)
    ("x86_64", X86_64, 53, (1, 1), ALLOW),  # socketpair(AF_UNIX)
    ("x86_64", X86_64, 16, (0, 0x5412), EPERM),  # ioctl(TIOCSTI)
    ("x86_64", X86_64, 16, (0, 0x5412 | 1 << 32), EPERM),  # high bits ignored
    ("x86_64", X86_64, 16, (0, 0x541C), EPERM),  # ioctl(TIOCLINUX)
    ("x86_64", X86_64, 16, (0, 0x541B), ALLOW),  # ioctl(FIONREAD)
    ("x86_64", X86_64, X32 | 0, (), ALLOW),  # x32 read
    ("x86_64", X86_64, X32 | 425, (), ENOSYS),  # x32 io_uring_setup
    ("x86_64", X86_64, X32 | 41, (1,), EPERM),  # x32 socket(AF_UNIX)
    ("x86_64", X86_64, X32 | 514, (0, 0x5412), EPERM),  # x32 ioctl(TIOCSTI)
    ("x86_64", I386, 3, (), ALLOW),  # i386 read
    ("x86_64", I386, 102, (), EPERM),  # i386 socketcall
    ("x86_64", I386, 359, (1,), EPERM),  # i386 socket(AF_UNIX)
    ("x86_64", I386, 362, (), ALLOW),  # i386 connect
    ("x86_64", I386, 425, (), ENOSYS),  # i386 io_uring_setup
    ("x86_64", I386, 288, (), ENOSYS),  # i386 keyctl
    ("x86_64", 0xDEAD, 0, (), ENOSYS),  # an ABI the filter does not know
    ("aarch64", AARCH64, 56, (), ALLOW),  # openat
    ("aarch64", AARCH64, 425, (), ENOSYS),
    ("aarch64", AARCH64, 219, (), ENOSYS),  # keyctl
    ("aarch64", AARCH64, 198, (1,), EPERM),  # socket(AF_UNIX)
    ("aarch64", AARCH64, 29, (0, 0x5412), EPERM),  # ioctl(TIOCSTI)
    ("aarch64", ARM, 3, (), ALLOW),  # arm read
    ("aarch64", ARM, 281, (1,), EPERM),  # arm socket(AF_UNIX)
])
def test_seccomp_allowlist_verdicts(machine: str, arch: int, nr: int, args: tuple[int, ...],
                                    verdict: int) -> None:
    raw = seccomp.program(machine)
    assert raw is not None
    assert _run_bpf(raw, arch, nr, args) == verdict


def test_seccomp_program_is_well_formed() -> None:
    for machine in ("x86_64", "aarch64"):
        raw = seccomp.program(machine)
        assert raw is not None and len(raw) % 8 == 0 and len(raw) // 8 < 4096
        insns = [struct.unpack("=HBBI", raw[i:i + 8]) for i in range(0, len(raw), 8)]
        for pc, (code, jt, jf, k) in enumerate(insns):
            if code == 0x15:  # every jump lands inside the program
                assert pc + 1 + max(jt, jf) < len(insns)
            if code == 0x05:
                assert pc + 1 + k < len(insns)
    assert seccomp.program("riscv64") is None


def test_sandbox_env_points_the_ca_variables_at_the_sandbox_copies() -> None:
    req = launch.Request(
        argv=["x"], env={"SSL_CERT_FILE": "/h/ca-bundle.pem", "NODE_EXTRA_CA_CERTS": "/h/ca.crt",
                         "OTHER": "/h/ca.crt-not"},
        outer_env={}, home=Path("/h"), bundle=Path("/h/ca-bundle.pem"),
        ca_cert=Path("/h/ca.crt"), proxy_socket=None, proxy_port=1,
    )
    req = dataclasses.replace(req, env={**req.env, "WGETRC": "/h/agent-wgetrc"})
    env = launch.sandbox_env(req, Path("/tmp/d"))
    assert env == {"SSL_CERT_FILE": "/tmp/d/ca-bundle.pem",
                   "NODE_EXTRA_CA_CERTS": "/tmp/d/ca.crt", "OTHER": "/h/ca.crt-not",
                   "WGETRC": "/tmp/d/agent-wgetrc"}


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


def test_tmpdir_outside_the_writable_places_is_replaced() -> None:
    assert launch.writable_in("/tmp/x", ())
    assert launch.writable_in("/w/tmp", ("/w",))
    assert not launch.writable_in("/var/tmp", ("/w",))
