"""`vaultproxy` command line: one module per subcommand group, each with ``register()``."""

from __future__ import annotations

import os.path
import sys

from vaultproxy.cli import tty

if os.path.basename(sys.argv[0]) in ("vaultproxy", "__main__.py"):
    # This process is the `vaultproxy` program: echo off now, before anything heavy loads,
    # when the command will prompt (typed-ahead text is then never shown in clear).
    tty.hide_typing(sys.argv[1:])

import argparse  # noqa: E402
import logging  # noqa: E402
from collections.abc import Callable, Sequence
from importlib import import_module

from vaultproxy import __version__
from vaultproxy.errors import UsageError, VaultproxyError
from vaultproxy.values import logfilter

# Subcommand modules, in --help order. Each exposes register(subparsers).
COMMAND_MODULES = ("init", "secret", "passwd", "check", "run", "control", "ca", "env_exec",
                   "agent", "tpm", "sync", "tail", "lifecycle", "completion", "approvals",
                   "dashboard", "mcp")

# The module that defines each command: `vaultproxy run` imports `run`'s module only, so its
# password prompt is up before the other commands' imports (config models, httpx, ...).
COMMAND_MODULE = {
    "init": "init", "secret": "secret", "passwd": "passwd", "check": "check", "run": "run",
    "status": "control", "unlock": "control", "lock": "control", "reload": "control",
    "ca": "ca", "env": "env_exec", "exec": "env_exec", "agent": "agent", "tpm": "tpm",
    "sync": "sync", "tail": "tail", "stop": "lifecycle", "try": "lifecycle",
    "doctor": "lifecycle", "completion": "completion",
    "approvals": "approvals", "approve": "approvals", "deny": "approvals",
    "dashboard": "dashboard", "mcp": "mcp",
}

DESCRIPTION = """\
vaultproxy keeps API keys out of AI agents: agents run with HTTPS_PROXY pointing at it,
and for the hosts registered in services.toml it injects the real credential from an
encrypted keystore. The agent only ever holds a placeholder."""

EPILOG = """\
first steps:
  vaultproxy init                            create ~/.config/vaultproxy (keystore, CA)
  printf %s "$KEY" | vaultproxy secret set openai
  $EDITOR ~/.config/vaultproxy/services.toml
  vaultproxy check && vaultproxy run         the proxy on 127.0.0.1:3203
  vaultproxy exec -- claude                  an agent behind it

Every command takes --home DIR (default $VAULTPROXY_HOME or ~/.config/vaultproxy).
`vaultproxy COMMAND --help` describes one command. Docs: README.md, docs/operator/."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"vaultproxy: error: {message}\n")
        raise SystemExit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or (``command``) only the module defining that command."""
    parser = _Parser(prog="vaultproxy", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vaultproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = (COMMAND_MODULE[command],) if command in COMMAND_MODULE else COMMAND_MODULES
    for name in modules:
        try:
            module = import_module(f"vaultproxy.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"vaultproxy.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="vaultproxy home (default: $VAULTPROXY_HOME or ~/.config/vaultproxy)",
    )


def add_password_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-file",
        metavar="F",
        help="read the master password from file F (else $VAULTPROXY_PASSWORD_FILE, else a prompt)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    from vaultproxy.cli import tty

    tty.hide_typing(sys.argv[1:] if argv is None else argv)  # before the heavy imports
    try:
        return _main(argv)
    finally:
        tty.restore()


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logfilter.install()
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["--version"]:  # without loading every command's module
        sys.stdout.write(f"vaultproxy {__version__}\n")
        return 0
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    from vaultproxy.cli.password import PromptCancelled

    try:
        return func(args)
    except PromptCancelled as e:
        print(f"vaultproxy: {e}", file=sys.stderr)
        return e.exit_code
    except UsageError as e:
        print(f"vaultproxy: {e}", file=sys.stderr)
        return 2
    except VaultproxyError as e:
        print(f"vaultproxy: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nvaultproxy: interrupted", file=sys.stderr)
        return 130
