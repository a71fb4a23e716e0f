"""`vaultproxy completion bash|zsh|fish`: a completion script generated from the argparse
parser itself (shtab), so the commands and flags it completes are the ones that exist."""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh", "fish")

INSTALL = {
    "bash": "vaultproxy completion bash > ~/.local/share/bash-completion/completions/vaultproxy",
    "zsh": "vaultproxy completion zsh > ~/.zfunc/_vaultproxy   (with fpath+=(~/.zfunc) in "
           "~/.zshrc, before compinit)",
    "fish": "vaultproxy completion fish > ~/.config/fish/completions/vaultproxy.fish",
}


def script(shell: str) -> str:
    import shtab

    from vaultproxy.cli import build_parser

    if shell == "fish":  # shtab writes bash, zsh and tcsh; fish gets plain command lists
        return _fish(build_parser())
    return str(shtab.complete(build_parser(), shell=shell))


def _fish(parser: argparse.ArgumentParser) -> str:
    lines = ["# vaultproxy completion for fish (vaultproxy completion fish)",
             "complete -c vaultproxy -f"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    names = " ".join(sub.choices)
    for name, p in sub.choices.items():
        lines.append(f"complete -c vaultproxy -n 'not __fish_seen_subcommand_from {names}' "
                     f"-a {name} -d {_q(helps.get(name, ''))}")
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--"):
                    flag = f"-l {opt[2:]}"
                elif len(opt) == 2:
                    flag = f"-s {opt[1]}"
                else:
                    continue
                wants = " -r" if action.nargs != 0 else ""
                lines.append(f"complete -c vaultproxy -n '__fish_seen_subcommand_from {name}' "
                             f"{flag}{wants} -d {_q(action.help or '')}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    if text == argparse.SUPPRESS:
        text = ""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    if sys.stdout.isatty():
        sys.stderr.write(f"vaultproxy: install it with: {INSTALL[args.shell]}\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, fish)",
                       description="Print a completion script for SHELL on stdout. Install: "
                       + "; ".join(INSTALL.values()))
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash, zsh or fish")
    p.set_defaults(func=cmd_completion)
