"""A venv whose interpreter is this Python linked statically: the same CPython objects, no
``libpython3.X.so`` (what the interpreter build costs vaultproxy per request).

    .venv/bin/python bench/static_python.py /tmp/vp-static     # ~3 min (pip's cache)
    /tmp/vp-static/venv/bin/python bench/hops.py --callgrind --tree now=. -n 1000
    /tmp/vp-static/venv/bin/python bench/peers.py --quick --only vaultproxy,srt --no-doc

pyenv builds CPython with ``--enable-shared`` and neither PGO nor LTO by default; Debian's,
Fedora's and python.org's builds link the interpreter statically (and use PGO + LTO). In a
shared ``libpython`` every read of the thread state goes through ``__tls_get_addr`` and every
call between the library's own functions through its PLT; linked into the executable, the
linker turns those into direct accesses and calls. Such a build keeps ``libpython3.X.a`` and
``python.o`` in its ``config-3.X-<platform>`` directory (``sysconfig``'s ``LIBPL``): this
links them with the flags the build recorded (``LINKFORSHARED``, ``LIBS``, ``SYSLIBS``) into
``DEST/interp/python3.X`` (``sys.prefix`` is the original's, found by its compiled-in
prefix), makes ``DEST/venv`` with it and installs this checkout into that venv
(``constraints.txt``, ``.[dev]``). Nothing is compiled: PGO and LTO need the sources, which
this does not have. A build without ``libpython3.X.a`` (a static one already) is refused."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def link(dest: Path) -> Path:
    """``dest/interp/python3.X`` linked from this interpreter's static library."""
    var = sysconfig.get_config_var
    version = var("VERSION")
    libpl = Path(var("LIBPL"))
    archive, main_o = libpl / f"libpython{version}.a", libpl / "python.o"
    if not var("Py_ENABLE_SHARED"):
        sys.exit(f"{sys.executable} is not a --enable-shared build: it is static already")
    for need in (archive, main_o):
        if not need.exists():
            sys.exit(f"{need} is missing: this build kept no static library to link")
    out = dest / "interp" / f"python{version}"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        *shlex.split(var("CC")), "-o", str(out), str(main_o),
        "-Wl,--whole-archive", str(archive), "-Wl,--no-whole-archive",
        *shlex.split(var("LINKFORSHARED") or ""), *shlex.split(var("LIBS") or ""),
        *shlex.split(var("SYSLIBS") or ""), "-lpthread", "-lutil",
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    probe = subprocess.run([str(out), "-c", "import ssl, sys; print(sys.version)"],
                           check=True, capture_output=True, text=True)
    print(f"linked {out} ({probe.stdout.strip()})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", type=Path, help="directory for interp/ and venv/")
    ap.add_argument("--no-install", action="store_true", help="link and make the venv only")
    args = ap.parse_args()
    interp = link(args.dest.resolve())
    venv = args.dest.resolve() / "venv"
    subprocess.run([str(interp), "-m", "venv", "--clear", str(venv)], check=True)
    if not args.no_install:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]"], check=True)
    print(f"{venv / 'bin' / 'python'}: run a bench with it (its docstring says how)")


if __name__ == "__main__":
    main()
