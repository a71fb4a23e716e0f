"""`vaultproxy env` and `vaultproxy exec`: the environment an agent runs in (SPEC §7).

The agent gets the proxy URL (with ``NAME:TOKEN`` when ``--agent`` is given), the CA bundle
variables and each service's placeholder; nothing else of ours. The agent token is read from
``--token-file F`` or ``$VAULTPROXY_AGENT_TOKEN`` (vaultproxy never stores it in plaintext).

``exec`` isolates the command by default (vaultproxy/sandbox/: bubblewrap; the home hidden,
own pid and network namespaces, the proxy reached through ``proxy.sock``). ``--share-net``
keeps the host network; ``--no-isolate`` replaces itself with the command (``os.execvpe``)
after a warning. Either way exit status, signals and stdio are the command's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from vaultproxy import agents
from vaultproxy.ca import build_bundle
from vaultproxy.cli import add_home
from vaultproxy.config.load import load_config
from vaultproxy.errors import UsageError, VaultproxyError
from vaultproxy.home import Home, pid_alive
from vaultproxy.sandbox import bwrap, launch, runtimes

TOKEN_ENV = "VAULTPROXY_AGENT_TOKEN"  # noqa: S105 - a variable name
NO_PROXY = "localhost,127.0.0.1,::1"
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")
BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO",
               "AWS_CA_BUNDLE")
# Removed from an exec'd command's environment: ours (passwords, tokens, home) and proxy
# settings that would route around or past the ones we set.
STRIP_PREFIXES = ("VAULTPROXY_",)
STRIP_NAMES = ("ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")
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
    for service in config.services:
        if service.env:
            env[service.env] = service.placeholder_text
    for decoy in config.honeytoken:  # SPEC §10: indistinguishable from a real one
        if decoy.env:
            env[decoy.env] = decoy.value
    return env


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


def child_environment(base: Mapping[str, str], ours: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in base.items()
        if not k.startswith(STRIP_PREFIXES) and k not in STRIP_NAMES
    }
    env.update(ours)
    return env


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
    env = agent_environment(Home.resolve(args.home), args.agent, args.token_file)
    sys.stdout.write(f"# vaultproxy: {exposure('a shell using these variables')}; "
                     "`vaultproxy exec` isolates\n")
    sys.stdout.write(render(env, args.shell))
    return 0


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
    home = Home.resolve(args.home)
    ours = agent_environment(home, args.agent, args.token_file)
    warn_runtime(command)
    print(f"vaultproxy: SECURITY: --no-isolate: {exposure(command[0])}", file=sys.stderr)
    return exec_plain(command, child_environment(os.environ, ours))


def warn_runtime(command: list[str]) -> None:
    note = runtimes.warning(command)
    if note:
        print(note, file=sys.stderr)


def exec_isolated(args: argparse.Namespace, command: list[str]) -> int:
    bwrap_path = bwrap.find()
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
    request = launch.Request(
        argv=command,
        env=child_environment(os.environ, ours),
        outer_env=child_environment(os.environ, {}),
        home=home.path,
        bundle=home.ca_bundle,
        ca_cert=home.ca_cert,
        proxy_socket=sock,
        proxy_port=info.port,
        hide_files=secret_files(home, args.token_file),
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


def secret_files(home: Home, token_file: str | None) -> tuple[str, ...]:
    """Files outside the home that hold vaultproxy secrets: hidden in the sandbox."""
    out = []
    for raw in (os.environ.get("VAULTPROXY_PASSWORD_FILE"), token_file):
        if raw and Path(raw).is_file() and not Path(raw).resolve().is_relative_to(
                home.path.resolve()):
            out.append(os.path.abspath(raw))
    return tuple(dict.fromkeys(out))


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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "env", help="print the proxy/CA/placeholder exports for an agent shell",
        description="Print shell lines setting HTTPS_PROXY, the CA bundle variables and each "
        "service's placeholder variable. Use: eval \"$(vaultproxy env)\" (sh) or "
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
        description="Run CMD with the agent environment of `vaultproxy env` (vaultproxy's own "
        "VAULTPROXY_* variables removed), in a bubblewrap sandbox where the vaultproxy home, "
        "the proxy's processes and the network (except the proxy) are out of reach. Exit "
        "status, signals and stdio are CMD's own.",
    )
    _agent_args(p)
    p.add_argument("--share-net", action="store_true",
                   help="keep the host network in the sandbox (e.g. local MCP servers); the "
                        "agent can then reach hosts around the proxy")
    p.add_argument("--no-isolate", action="store_true",
                   help="no sandbox: run CMD as a plain child that can read the vaultproxy "
                        "home and the proxy's memory (prints a warning)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    p.set_defaults(func=cmd_exec)
