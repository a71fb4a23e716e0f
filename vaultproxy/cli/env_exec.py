"""`vaultproxy env` and `vaultproxy exec`: the environment an agent runs in (SPEC §7).

The agent gets the proxy URL (with ``NAME:TOKEN`` when ``--agent`` is given), the CA bundle
variables and each service's placeholder; of the caller's environment only an allowlist, with
no stored secret in it (cli/inherit.py). The agent token is read from
``--token-file F`` or ``$VAULTPROXY_AGENT_TOKEN`` (vaultproxy never stores it in plaintext).

``exec`` isolates the command by default (vaultproxy/sandbox/: bubblewrap; a read-only file
system, the homes and credential stores hidden, own pid and network namespaces, the proxy
reached through ``proxy.sock``). ``--share-net``
keeps the host network; ``--no-isolate`` replaces itself with the command (``os.execvpe``)
after a warning. Either way exit status, signals and stdio are the command's own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from vaultproxy.access import agents
from vaultproxy.ca import build_bundle
from vaultproxy.cli import add_home, inherit
from vaultproxy.config.load import load_config
from vaultproxy.config.models import AgentSettings
from vaultproxy.errors import UsageError, VaultproxyError
from vaultproxy.files.atomic_file import write_atomic
from vaultproxy.files.home import Home, pid_alive
from vaultproxy.sandbox import bwrap, hide, launch, runtimes, seccomp

TOKEN_ENV = "VAULTPROXY_AGENT_TOKEN"  # noqa: S105 - a variable name
NO_PROXY = "localhost,127.0.0.1,::1"
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
               "AWS_CA_BUNDLE")
_VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class NotRunning(VaultproxyError):
    """The proxy of this home is not running (no run.json, or its pid is gone)."""


@dataclass(frozen=True)
class RunInfo:
    """What run.json says about the running proxy."""

    pid: int
    url: str
    socket: str | None  # proxy.sock (None: a proxy without one, e.g. mitmdump)

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 3203


def run_info(home: Home) -> RunInfo:
    """The running proxy from run.json; raise NotRunning naming the start command."""
    start = f"start it with `vaultproxy run --home {home.path}`"
    try:
        data = json.loads(home.run_json.read_text())
        pid = int(data["pid"])
        url = str(data["proxy_url"])
        sock = data.get("proxy_socket")
    except FileNotFoundError:
        raise NotRunning(f"vaultproxy is not running for {home.path}; {start}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise NotRunning(f"{home.run_json} is unreadable; {start}") from None
    if not pid_alive(pid):
        raise NotRunning(
            f"vaultproxy is not running for {home.path} (pid {pid} in run.json is gone); {start}"
        )
    return RunInfo(pid, url, str(sock) if sock else None)


def proxy_url(home: Home) -> str:
    return run_info(home).url


def read_token(token_file: str | None) -> str:
    """The agent token from --token-file, else $VAULTPROXY_AGENT_TOKEN."""
    if token_file:
        try:
            raw = Path(token_file).read_text().strip()
        except OSError as e:
            raise UsageError(f"cannot read token file {token_file}: {e.strerror}") from None
    else:
        raw = os.environ.get(TOKEN_ENV, "").strip()
    if not raw:
        raise UsageError(
            f"--agent needs the agent's token: pass --token-file FILE or set {TOKEN_ENV} "
            "(the token is printed once by `vaultproxy agent add`)"
        )
    if not agents.TOKEN_RE.fullmatch(raw):
        raise UsageError("the agent token is malformed (expected the vpa_... value from "
                         "`vaultproxy agent add`)")
    return raw


def with_credentials(url: str, name: str, token: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(name, safe='')}:{quote(token, safe='')}@{parts.netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def loopback_url(url: str, port: int) -> str:
    """The proxy URL as seen inside the sandbox's network namespace (the forwarder)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, parts.query,
                       parts.fragment))


def agent_environment(
    home: Home, agent: str | None, token_file: str | None, *, url: str | None = None
) -> dict[str, str]:
    """SPEC §7's variables, in a stable order. ``url``: the proxy URL to use instead of
    run.json's (the sandbox's own)."""
    url = url or proxy_url(home)
    if agent is not None:
        agents.check_name(agent)
        url = with_credentials(url, agent, read_token(token_file))
    config = load_config(home.services)
    bundle = str(build_bundle(home))
    env: dict[str, str] = {name: url for name in PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    env.update({name: bundle for name in BUNDLE_VARS})
    env["NODE_EXTRA_CA_CERTS"] = str(home.ca_cert)
    env["NODE_USE_ENV_PROXY"] = "1"
    env["NPM_CONFIG_CAFILE"] = bundle  # npm's own cafile setting beats NODE_EXTRA_CA_CERTS
    env["WGETRC"] = str(write_wgetrc(home, bundle))  # wget reads no CA variable
    for service in config.services:
        if service.env:
            env[service.env] = service.placeholder_text
    for decoy in config.honeytoken:  # SPEC §10: indistinguishable from a real one
        if decoy.env:
            env[decoy.env] = decoy.value
    return env


def write_wgetrc(home: Home, bundle: str) -> Path:
    """A wgetrc naming the bundle (wget honours ``https_proxy`` but no CA variable)."""
    path = home.path / launch.WGETRC_NAME
    text = launch.wgetrc_text(bundle)
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text.encode(), mode=0o644)
    return path


def agent_settings(home: Home) -> AgentSettings:
    return load_config(home.services).agent


def warn(message: str) -> None:
    print(f"vaultproxy: warning: {message}", file=sys.stderr)


def inherited(home: Home, args: argparse.Namespace) -> inherit.Inherited:
    """The caller's environment as the agent may have it (allowlist, secrets swapped or
    dropped), with ``--keep-env`` and ``[agent] keep_env``."""
    keep = inherit.check_keep([*agent_settings(home).keep_env, *(args.keep_env or [])])
    return inherit.inherit(home, os.environ, keep, warn)


def render(env: Mapping[str, str], shell: str) -> str:
    """Lines a shell can source: ``export K='v'`` (sh) or ``set -gx K 'v'`` (fish)."""
    lines = []
    for key, value in env.items():
        if not _VAR_RE.fullmatch(key):
            raise UsageError(f"{key!r} is not a valid environment variable name")
        if shell == "fish":
            quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
            lines.append(f"set -gx {key} {quoted};")
        else:
            quoted = "'" + value.replace("'", "'\"'\"'") + "'"
            lines.append(f"export {key}={quoted};")
    return "\n".join(lines) + "\n"


def exposure(who: str) -> str:
    """What an agent without the sandbox can reach (the --no-isolate warning, env's comment)."""
    return (f"{who} is not isolated: it runs as uid {os.getuid()} and can read the "
            "vaultproxy home (keystore, CA key, admin token), use admin.sock, read other "
            "same-uid processes and reach the network around the proxy (SECURITY.md §3)")


def mtls_kit(home: Home, host: str | None) -> str:
    """`env --mtls`: the variables and commands for an agent on another machine that
    reaches the running proxy's mTLS listener with a client certificate (its CN = agent)."""
    import json

    from vaultproxy.config.load import load_config

    try:
        listeners = json.loads(home.run_json.read_text()).get("mtls") or []
    except (OSError, ValueError):
        listeners = []
    if not listeners:
        raise UsageError("no mTLS listener is running for this home: start `vaultproxy run "
                         "--mtls-listen HOST:PORT` (with [mtls] in services.toml) first")
    address = str(listeners[0])
    if host:
        address = f"{host}:{address.rsplit(':', 1)[1]}"
    url = f"https://{address}"
    env = {"HTTPS_PROXY": url, "https_proxy": url, "HTTP_PROXY": url, "http_proxy": url,
           "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1"}
    for service in load_config(home.services).services:
        if service.env:
            env[service.env] = service.placeholder_text
    head = (
        f"# vaultproxy mTLS listener {url}: the agent is the CN of its client certificate\n"
        f"# (issued by [mtls] client_ca; `vaultproxy agent add CN --services ...`).\n"
        f"# Copy to the agent's machine: {home.ca_cert} (the MITM CA its HTTPS clients\n"
        "# trust) and the CA of [mtls] server_cert (to verify the listener).\n"
        f'# curl:  curl --proxy "$HTTPS_PROXY" --proxy-cacert LISTENER-CA.pem \\\n'
        "#         --proxy-cert CLIENT.pem --proxy-key CLIENT.key --cacert ca.crt URL\n"
        "# httpx: httpx.Client(proxy=httpx.Proxy(os.environ['HTTPS_PROXY'], ssl_context=ctx),\n"
        "#         verify=ssl.create_default_context(cafile='ca.crt')) where ctx =\n"
        "#         ssl.create_default_context(cafile='LISTENER-CA.pem') and\n"
        "#         ctx.load_cert_chain('CLIENT.pem', 'CLIENT.key')\n"
        "# More: docs/operator/AGENTS.md, \"Agents on other machines (mTLS)\".\n"
    )
    return head + render(env, "sh")


def cmd_env(args: argparse.Namespace) -> int:
    if args.mtls:
        sys.stdout.write(mtls_kit(Home.resolve(args.home), args.mtls_host))
        return 0
    home = Home.resolve(args.home)
    env = agent_environment(home, args.agent, args.token_file)
    passed = inherited(home, args)
    unset = [k for k in os.environ if k not in passed.env and k not in env
             and _VAR_RE.fullmatch(k)]
    sys.stdout.write(f"# vaultproxy: {exposure('a shell using these variables')}; "
                     "`vaultproxy exec` isolates\n")
    sys.stdout.write(render_unset(unset, args.shell))
    sys.stdout.write(render({k: passed.env[k] for k in passed.swapped if k not in env},
                            args.shell))
    sys.stdout.write(render(env, args.shell))
    return 0


def render_unset(names: list[str], shell: str) -> str:
    """The reset: every inherited variable the agent may not have (SPEC §7)."""
    if not names:
        return ""
    if shell == "fish":
        return "".join(f"set -e {k};\n" for k in names)
    return "".join(f"unset {k};\n" for k in names)


def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("nothing to run: vaultproxy exec [--agent NAME] -- CMD [ARGS...]")
    if args.no_isolate and args.share_net:
        raise UsageError("--share-net is a kind of isolation; it cannot go with --no-isolate")
    if not args.no_isolate:
        return exec_isolated(args, command)
    if args.write or args.expose:
        raise UsageError("--write and --expose shape the sandbox; --no-isolate has none")
    home = Home.resolve(args.home)
    ours = agent_environment(home, args.agent, args.token_file)
    passed = inherited(home, args)
    warn_runtime(command)
    print(f"vaultproxy: SECURITY: --no-isolate: {exposure(command[0])}", file=sys.stderr)
    return exec_plain(command, {**passed.env, **ours})


def warn_runtime(command: list[str]) -> None:
    note = runtimes.warning(command)
    if note:
        print(note, file=sys.stderr)


def exec_isolated(args: argparse.Namespace, command: list[str]) -> int:
    bwrap_path = bwrap.find()
    seccomp.program()  # exit 2 now, naming libseccomp, if the filter cannot be built
    home = Home.resolve(args.home)
    info = run_info(home)
    share_net = bool(args.share_net)
    sock = None if share_net else usable_socket(home, info)
    check_outside_home(home)
    nested_off = bwrap.has_disable_userns(bwrap_path)
    bwrap.probe(bwrap_path, share_net=share_net, disable_userns=nested_off)
    url = info.url if share_net else loopback_url(info.url, info.port)
    ours = agent_environment(home, args.agent, args.token_file, url=url)
    warn_runtime(command)
    if share_net:
        print("vaultproxy: SECURITY: --share-net: the agent can reach the network (and local "
              "services) around the proxy; the home and the proxy's processes stay hidden",
              file=sys.stderr)
    passed = inherited(home, args)
    settings = agent_settings(home)
    user_homes = user_home_dirs()
    writable = bwrap.writable_paths(os.getcwd(), user_homes,
                                    [*settings.write, *(args.write or [])], warn)
    if not launch.writable_in(passed.env.get("TMPDIR", bwrap.PRIVATE_TMP), writable):
        passed.env["TMPDIR"] = bwrap.PRIVATE_TMP  # a read-only TMPDIR breaks every tool
    request = launch.Request(
        argv=command,
        env={**passed.env, **ours},
        outer_env=passed.env,  # the sandbox's first process is readable by the agent
        home=home.path,
        bundle=home.ca_bundle,
        ca_cert=home.ca_cert,
        proxy_socket=sock,
        proxy_port=info.port,
        hide=hidden(home, args, settings, user_homes),
        writable=writable,
        disable_userns=nested_off,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    return launch.run(request, bwrap_path)


def check_outside_home(home: Home) -> None:
    """Our Python and the current directory must stay visible once the home is hidden."""
    hidden = home.path.resolve()
    if Path(sys.prefix).resolve().is_relative_to(hidden):
        raise UsageError(f"vaultproxy's Python ({sys.prefix}) lives inside the home "
                         f"{home.path}, which the sandbox hides; install it elsewhere")
    if Path.cwd().resolve().is_relative_to(hidden):
        raise UsageError(f"the current directory is inside the vaultproxy home {home.path}, "
                         "which the sandbox hides; cd elsewhere first")


def usable_socket(home: Home, info: RunInfo) -> str:
    """proxy.sock of the running proxy, or exit 2 saying why isolation cannot reach it."""
    if info.socket is None:
        raise UsageError(
            f"the proxy running for {home.path} has no proxy.sock (a mitmdump-hosted proxy, "
            "or an older vaultproxy), so an isolated agent could not reach it; run the proxy "
            "with `vaultproxy run`, or use --share-net or --no-isolate"
        )
    if not Path(info.socket).is_socket():
        raise UsageError(f"{info.socket} (named in run.json) is missing; restart "
                         "`vaultproxy run`, or use --share-net or --no-isolate")
    return info.socket


def secret_files(token_file: str | None) -> list[str]:
    """Files outside the home that hold vaultproxy secrets (hidden under their real name:
    a symlinked password file leads to the cover)."""
    return [raw for raw in (os.environ.get("VAULTPROXY_PASSWORD_FILE"), token_file) if raw]


def user_home_dirs() -> list[str]:
    """$HOME and the passwd entry's home (they can differ; both are hidden/protected)."""
    out = [os.path.expanduser("~")]
    with contextlib.suppress(KeyError):
        out.append(pwd.getpwuid(os.getuid()).pw_dir)
    return list(dict.fromkeys(p for p in out if p and p != "/"))


def runtime_dirs() -> list[str]:
    """The user's runtime directory: D-Bus, systemd --user, gpg-agent, podman sockets."""
    return [p for p in (os.environ.get("XDG_RUNTIME_DIR"), f"/run/user/{os.getuid()}") if p]


def hidden(home: Home, args: argparse.Namespace, settings: AgentSettings,
           user_homes: list[str]) -> tuple[str, ...]:
    """Every path the sandbox covers, resolved, with its bind-mount aliases; exit 2 when a
    hidden file has a hard link we cannot cover (sandbox/hide.py)."""
    expose = list(args.expose or [])
    for p in expose:
        print(f"vaultproxy: SECURITY: --expose {p}: visible to the agent", file=sys.stderr)
    homes = [str(home.path), *(v for v in [os.environ.get("VAULTPROXY_HOME")] if v)]
    paths: list[str] = []
    for user_home in user_homes:
        paths += hide.candidates(user_home, homes, secret_files(args.token_file),
                                 settings.hide)
    paths += runtime_dirs()
    real = hide.resolve(paths, expose)
    hide.refuse_hard_links(hide.hard_linked(real, expose))
    return tuple(hide.with_aliases(real, hide.read_mounts()))


def exec_plain(command: list[str], env: dict[str, str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)  # noqa: S606 - running the user's command is the point
    except FileNotFoundError:
        print(f"vaultproxy: {command[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"vaultproxy: {command[0]}: permission denied", file=sys.stderr)
        return 126
    return 0  # not reached


def _agent_args(p: argparse.ArgumentParser) -> None:
    add_home(p)
    p.add_argument("--agent", metavar="NAME", help="authenticate to the proxy as agent NAME")
    p.add_argument("--token-file", metavar="F",
                   help=f"file holding the agent's token (else ${TOKEN_ENV})")
    p.add_argument("--keep-env", metavar="NAME", action="append",
                   help="pass this inherited variable too (repeatable; [agent] keep_env); "
                        "a value holding a stored secret still never passes")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "env", help="print the proxy/CA/placeholder exports for an agent shell",
        description="Print shell lines setting HTTPS_PROXY, the CA bundle variables and each "
        "service's placeholder variable, and unsetting every inherited variable an agent may "
        "not have (SPEC §7's allowlist, --keep-env; one holding a stored secret is unset or "
        "swapped for its placeholder). Use: eval \"$(vaultproxy env)\" (sh) or "
        "vaultproxy env --shell fish | source.",
    )
    _agent_args(p)
    p.add_argument("--shell", choices=("sh", "fish"), default="sh",
                   help="output syntax (default sh: bash, zsh, dash...)")
    p.add_argument("--mtls", action="store_true",
                   help="for an agent on another machine: the running mTLS listener "
                   "(`run --mtls-listen`) as HTTPS_PROXY, and how curl/httpx present a "
                   "client certificate")
    p.add_argument("--mtls-host", metavar="HOST",
                   help="with --mtls: the name or address other machines reach the listener "
                   "by (when it listens on 0.0.0.0, say)")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser(
        "exec", help="run a command, isolated, with the agent environment",
        description="Run CMD with the agent environment of `vaultproxy env` (an allowlist of "
        "inherited variables, none holding a stored secret), in a bubblewrap sandbox: the "
        "file system read-only except the working directory, a private /tmp and --write "
        "paths; the vaultproxy homes and your credential stores hidden; the proxy's "
        "processes and the network (except the proxy) out of reach. Exit status, signals "
        "and stdio are CMD's own.",
    )
    _agent_args(p)
    p.add_argument("--share-net", action="store_true",
                   help="keep the host network in the sandbox (e.g. local MCP servers); the "
                        "agent can then reach hosts around the proxy")
    p.add_argument("--no-isolate", action="store_true",
                   help="no sandbox: run CMD as a plain child that can read the vaultproxy "
                        "home and the proxy's memory (prints a warning)")
    p.add_argument("--write", metavar="PATH", action="append",
                   help="let the agent write PATH too (repeatable; [agent] write); the rest "
                        "of the file system is read-only but the working directory and /tmp")
    p.add_argument("--expose", metavar="PATH", action="append",
                   help="do not hide PATH (one of the credential stores, or a hard-linked "
                        "file); prints a warning")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_exec)
