"""What the sandbox hides, under every name the kernel knows it by (SPEC §7).

A path is not a file: the same inode can be reached through a symlink, a bind mount of it
(or of a directory above it), or a hard link. So:

- every path is resolved (``realpath``) and the *target* is covered: a symlink then leads to
  the cover, and a symlinked ``VAULTPROXY_PASSWORD_FILE`` is hidden, not an error;
- bind-mount aliases are found in ``/proc/self/mountinfo``: every mount of the same device
  whose root contains the hidden path shows it again, at a path covered too (cheap: one
  read of a small file, no tree walk);
- hard links cannot be found without walking every visible file system. A hidden file with
  more than one link (``st_nlink > 1``) has a name we do not cover: `exec` refuses to start
  and names it (``--expose PATH`` accepts that one, loudly). A directory cannot be
  hard-linked; the files inside the hidden credential stores are checked the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vaultproxy.errors import UsageError

# The user's well-known credential stores (SPEC §7), relative to $HOME.
CREDENTIAL_STORES = (
    ".ssh", ".aws", ".azure", ".config/gcloud", ".kube", ".docker", ".netrc",
    ".git-credentials", ".config/gh", ".npmrc", ".pypirc", ".gnupg", ".password-store",
    ".config/op", ".local/share/keyrings",
)
DEFAULT_HOME = ".config/vaultproxy"
MAX_CHECKED_FILES = 5000  # a hidden tree larger than this is checked only this far
MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    device: str  # major:minor
    root: str  # the path inside the device's file system this mount shows
    point: str  # where it is mounted


def parse_mountinfo(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            out.append(Mount(fields[2], _unescape(fields[3]), _unescape(fields[4])))
    return out


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _rel(path: str, top: str) -> str:
    return path[len(top.rstrip("/")):] if top != "/" else path


def aliases(path: str, mounts: Sequence[Mount]) -> list[str]:
    """Other paths showing ``path`` (resolved) through a bind mount of the same device."""
    owner = max((m for m in mounts if _under(path, m.point)), key=lambda m: len(m.point),
                default=None)
    if owner is None:
        return []
    inside = (owner.root.rstrip("/") + _rel(path, owner.point)) or "/"
    out = []
    for m in mounts:
        if m.device != owner.device or m is owner:
            continue
        if _under(inside, m.root):  # the mount shows the hidden path (or a parent of it)
            out.append((m.point.rstrip("/") + _rel(inside, m.root)) or "/")
        elif _under(m.root, inside):  # the mount shows a part of the hidden tree
            out.append(m.point)
    return [a for a in out if a != path]


def read_mounts() -> list[Mount]:
    try:
        return parse_mountinfo(Path(MOUNTINFO).read_text())
    except OSError:
        return []


def candidates(user_home: str, homes: Iterable[str], files: Iterable[str],
               extra: Iterable[str]) -> list[str]:
    """Every path to hide, as given (``~`` expanded); missing ones are skipped later."""
    out = [os.path.join(user_home, p) for p in (*CREDENTIAL_STORES, DEFAULT_HOME)]
    out += [*homes, *files]
    out += [os.path.expanduser(p) if p.startswith("~/") else p for p in extra]
    return out


def resolve(paths: Iterable[str], expose: Iterable[str]) -> list[str]:
    """Existing targets, resolved and de-duplicated, minus the exposed ones and anything
    inside another hidden directory (covered by it)."""
    shown = {os.path.realpath(os.path.expanduser(p)) for p in expose}
    real = []
    for p in paths:
        r = os.path.realpath(p)
        if os.path.lexists(r) and r not in shown and r != "/":
            real.append(r)
    real = sorted(set(real), key=len)
    out: list[str] = []
    for r in real:
        if not any(_under(r, o) and os.path.isdir(o) for o in out):
            out.append(r)
    return out


def with_aliases(paths: Sequence[str], mounts: Sequence[Mount]) -> list[str]:
    out = list(paths)
    for p in paths:
        for a in aliases(p, mounts):
            if a not in out and os.path.lexists(a):
                out.append(a)
    return out


def hard_linked(paths: Iterable[str], exposed: Iterable[str]) -> list[tuple[str, int]]:
    """Hidden files (also inside hidden directories) that have another name."""
    shown = {os.path.realpath(os.path.expanduser(p)) for p in exposed}
    found: list[tuple[str, int]] = []
    seen = 0
    for top in paths:
        for f in _files(top):
            seen += 1
            if seen > MAX_CHECKED_FILES:
                return found
            try:
                st = os.lstat(f)
            except OSError:
                continue
            if st.st_nlink > 1 and f not in shown:
                found.append((f, st.st_nlink))
    return found


def _files(top: str) -> Iterable[str]:
    if not os.path.isdir(top):
        yield top
        return
    for d, _dirs, names in os.walk(top, onerror=lambda _e: None):
        for n in names:
            yield os.path.join(d, n)


def refuse_hard_links(found: Sequence[tuple[str, int]]) -> None:
    if not found:
        return
    names = "; ".join(f"{f} ({n} names)" for f, n in found[:5])
    raise UsageError(
        f"cannot hide {names}: another name of the same file (a hard link) would be "
        "readable in the sandbox. Find it with `find / -xdev -samefile FILE` and remove it, "
        "or pass --expose FILE to run anyway (the agent may then read it)")
