"""What a serving process does not import (seam/imports.py, the lazy MCP endpoint, OTLP sink
and dashboard): memory and start-up time. Each probe runs in a fresh interpreter; the twin
imports the same module without ``lean()`` and sees the package the probe says is gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Only the admin/dashboard/MCP/OTLP features (or mitmproxy's unused default addons) need these.
NEVER_IN_WORKER = (
    "uvicorn",
    "wsgiref",  # prometheus_client's exposition servers
    "mcp",
    "jinja2",
    "fastapi",
    "starlette",
    "ldap3",
    "flask",
    "werkzeug",
    "rich",
    "pygments",
    "google.protobuf",
    "opentelemetry",
    # mitmproxy's command-line parser and option files (seam/imports.py: lazy, see below)
    "pyparsing.core",
    "unittest",
    "ruamel.yaml.main",
    "importlib.metadata._adapters",  # pydantic's plugin scan (seam/imports.py)
    "jwt",  # signing is the supervisor's (mint/github_app.py, mint/google.py)
    "aioquic",  # QUIC/HTTP/3 (seam/quic.py): the proxy never listens on UDP
    "pylsqpack",
    "mitmproxy.proxy.layers.quic",
    "_brotli",  # codecs: loaded by the first br/zstd body
    "backports.zstd._zstd",
    "zstandard.backend_c",
)
NEVER_AT_RUN = (
    "mcp",
    "jinja2",
    "ldap3",
    "flask",
    "werkzeug",
    "rich",
    "pygments",
    "google.protobuf",
    "opentelemetry.exporter",
    "opentelemetry.sdk",
    "requests",
    "pyparsing.core",
    "unittest",
    "ruamel.yaml.main",
    "importlib.metadata._adapters",
    "aioquic",
    "_brotli",
)


def _loaded(code: str, names: tuple[str, ...]) -> dict[str, bool]:
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps({{n: n in sys.modules for n in {list(names)!r}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_worker_imports_none_of_the_supervisor_only_packages() -> None:
    # `python -m vaultproxy.engine.worker` imports this module first; it calls lean() itself.
    loaded = _loaded("import vaultproxy.engine.worker", NEVER_IN_WORKER)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


@pytest.mark.parametrize("process", ["worker", "run"])
def test_the_serving_loop_uvloop_brings_none_of_them(process: str) -> None:
    # engine/loop.py imports uvloop when a serving process starts its loop: the C loop and
    # the stdlib modules asyncio has anyway, none of what a worker or `run` must not load.
    start, never = (
        ("import vaultproxy.engine.worker", NEVER_IN_WORKER) if process == "worker" else
        ("from vaultproxy.seam import imports; imports.lean()\nimport vaultproxy.engine.serve",
         NEVER_AT_RUN))
    code = (f"{start}\nfrom vaultproxy.engine import loop\nassert loop.factory() is not None\n"
            "import sys\nassert 'uvloop.loop' in sys.modules")
    loaded = _loaded(code, never)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


def test_run_imports_no_mcp_dashboard_otlp_or_default_addons() -> None:
    # what `vaultproxy run` (cli/run.py: lean(), then engine.serve) has loaded when it serves
    code = "from vaultproxy.seam import imports; imports.lean()\nimport vaultproxy.engine.serve"
    loaded = _loaded(code, NEVER_AT_RUN)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


def test_run_with_workers_imports_the_engine_lean() -> None:
    # `run --workers N` reads MAX_WORKERS from engine.workers before the prompt (cli/run.py)
    code = ("from vaultproxy.cli.run import parse_workers\nassert parse_workers('2') == 2\n"
            "import vaultproxy.engine.serve")
    loaded = _loaded(code, NEVER_AT_RUN)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


def test_twin_without_lean_mitmproxy_master_pulls_the_default_addons() -> None:
    loaded = _loaded("import mitmproxy.master\nimport httpx", ("ldap3", "flask", "rich"))
    assert all(loaded.values()), loaded


def test_default_addons_still_there_on_demand() -> None:
    code = (
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import sys, mitmproxy.master\n"
        "from mitmproxy.addons import core\n"
        "assert 'ldap3' not in sys.modules\n"
        "import mitmproxy.addons as a\n"
        "assert a.save.Save and not hasattr(a, 'no_such_addon')\n"
        "print(len(a.default_addons()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert int(out.stdout.strip()) >= 30


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip().splitlines()[-1]


def test_twin_without_lean_mitmproxy_builds_its_command_grammar_and_yaml() -> None:
    # What the lean worker test above says is gone is what stock mitmproxy.master loads.
    names = ("pyparsing.core", "unittest", "ruamel.yaml.main")
    loaded = _loaded("import mitmproxy.master", names)
    assert all(loaded.values()), loaded
    assert _run("import mitmproxy.master, sys\n"
                "print('expr' in vars(sys.modules['mitmproxy.command_lexer']))") == "True"


def test_worker_has_not_built_the_command_grammar() -> None:
    code = ("import vaultproxy.engine.worker, sys\n"
            "print('expr' in vars(sys.modules['mitmproxy.command_lexer']))")
    assert _run(code) == "False"


def test_command_line_parsing_still_works_after_lean() -> None:
    # A typed command (CommandManager.execute: pyparsing grammar) runs the real lexer on
    # demand, and the names mitmproxy imported before that keep working.
    code = (
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import asyncio, sys\n"
        "from mitmproxy import master, options\n"
        "from mitmproxy.addons import core\n"
        "from mitmproxy.command_lexer import unquote\n"
        "assert 'pyparsing.core' not in sys.modules\n"
        "async def main():\n"
        "    m = master.Master(options.Options())\n"
        "    m.addons.add(core.Core())\n"
        "    m.commands.execute('set showhost')\n"
        "    assert m.options.showhost is True\n"
        "    m.commands.execute('set confdir \"/tmp/a b\"')\n"
        "    return m.options.confdir\n"
        "confdir = asyncio.run(main())\n"
        "assert 'pyparsing.core' in sys.modules and unquote('\"a b\"') == 'a b'\n"
        "import pyparsing, mitmproxy.command_lexer as lx\n"
        "assert not isinstance(pyparsing.testing, type(sys)), 'the class, as stock'\n"
        "assert pyparsing.__version__ and lx.quote('a b') == '\"a b\"'\n"
        "print(confdir)\n"
    )
    assert _run(code) == "/tmp/a b"


def test_option_files_still_work_after_lean(tmp_path: Path) -> None:
    # mitmproxy.optmanager reads and writes option files with ruamel.yaml, loaded on use.
    path = tmp_path / "config.yaml"
    code = (
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import sys\n"
        "from mitmproxy import optmanager, options\n"
        "assert 'ruamel.yaml.main' not in sys.modules\n"
        "o = options.Options()\n"
        "o.update(confdir='/tmp/a b')\n"
        f"optmanager.save(o, {str(path)!r})\n"
        "p = options.Options()\n"
        f"optmanager.load_paths(p, {str(path)!r})\n"
        "print(p.confdir, 'ruamel.yaml.main' in sys.modules)\n"
    )
    assert _run(code) == "/tmp/a b True"
    assert "confdir: /tmp/a b" in path.read_text()


def test_twin_without_lean_pydantic_scans_entry_points() -> None:
    code = ("import os; os.environ.pop('PYDANTIC_DISABLE_PLUGINS', None)\n"
            "import pydantic\n"
            "class M(pydantic.BaseModel):\n"
            "    x: int\n")
    assert _loaded(code, ("importlib.metadata._adapters",)) == {
        "importlib.metadata._adapters": True}


def test_metadata_still_answers_after_lean() -> None:
    code = (
        "import os; os.environ.pop('PYDANTIC_DISABLE_PLUGINS', None)\n"
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import sys, pydantic\n"
        "from importlib.metadata import entry_points, version\n"
        "class M(pydantic.BaseModel):\n"
        "    x: int\n"
        "assert M(x=1).x == 1 and 'importlib.metadata._adapters' not in sys.modules\n"
        "import importlib.metadata\n"
        "assert importlib.metadata.version('pydantic') == version('pydantic') == "
        "pydantic.VERSION\n"
        "print(len(entry_points(group='console_scripts')) > 0, "
        "os.environ['PYDANTIC_DISABLE_PLUGINS'])\n"
    )
    assert _run(code) == "True __all__"


def test_an_operator_can_keep_pydantic_plugins() -> None:
    # PYDANTIC_DISABLE_PLUGINS set (even empty) is left alone, and pydantic scans as stock.
    code = (
        "import os; os.environ['PYDANTIC_DISABLE_PLUGINS'] = ''\n"
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import pydantic\n"
        "class M(pydantic.BaseModel):\n"
        "    x: int\n"
        "print(repr(os.environ['PYDANTIC_DISABLE_PLUGINS']))\n"
    )
    assert _loaded(code, ("importlib.metadata._adapters",)) == {
        "importlib.metadata._adapters": True}


def test_twin_without_lean_the_codecs_load_at_import() -> None:
    names = ("_brotli", "backports.zstd._zstd", "zstandard.backend_c")
    loaded = _loaded("import mitmproxy.net.encoding, httpx", names)
    assert all(loaded.values()), loaded


def test_br_and_zstd_bodies_still_decode_after_lean() -> None:
    # mitmproxy's encoding (a flow's body) and httpx's decoders (the upstream pool) both.
    code = (
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import sys, httpx\n"
        "from mitmproxy.net import encoding\n"
        "assert '_brotli' not in sys.modules\n"
        "data = b'vaultproxy ' * 500\n"
        "for e in ('br', 'zstd'):\n"
        "    assert encoding.decode(encoding.encode(data, e), e) == data\n"
        "import brotli, zstandard\n"
        "for e, packed in (('br', brotli.compress(data)),\n"
        "                  ('zstd', zstandard.ZstdCompressor().compress(data))):\n"
        "    r = httpx.Response(200, headers={'content-encoding': e}, content=packed)\n"
        "    assert r.read() == data, e\n"
        "print(sorted(httpx._decoders.SUPPORTED_DECODERS))\n"
    )
    assert _run(code) == "['br', 'deflate', 'gzip', 'identity', 'zstd']"


def test_twin_without_lean_mitmproxy_loads_aioquic() -> None:
    names = ("aioquic", "pylsqpack", "mitmproxy.proxy.layers.quic")
    loaded = _loaded("import mitmproxy.proxy.layers, mitmproxy.addons.tlsconfig", names)
    assert all(loaded.values()), loaded


def test_quic_names_still_work_after_lean() -> None:
    # What mitmproxy's modules imported as stand-ins: calling one loads QUIC for real, and
    # isinstance/issubclass answer as for the real classes (before: no instance can exist).
    code = (
        "from vaultproxy.seam import imports; imports.lean()\n"
        "import sys\n"
        "from mitmproxy.proxy import layers\n"
        "from mitmproxy.proxy.layers import http\n"
        "from mitmproxy.addons import next_layer, tlsconfig\n"
        "assert 'aioquic' not in sys.modules\n"
        "assert not isinstance(object(), layers.ClientQuicLayer)\n"
        "assert http.QuicStreamEvent.__module__.endswith('quic._events')  # the real class\n"
        "assert list(tlsconfig.H3_ALPN) == ['h3'] and 'aioquic' in sys.modules\n"
        "import aioquic.tls, mitmproxy.proxy.layers.quic as quic\n"
        "assert tlsconfig.CipherSuite['AES_128_GCM_SHA256'] is "
        "aioquic.tls.CipherSuite.AES_128_GCM_SHA256\n"
        "settings = tlsconfig.quic.QuicTlsSettings()\n"
        "assert type(settings) is quic.QuicTlsSettings\n"
        "assert isinstance(settings, tlsconfig.quic.QuicTlsSettings)\n"
        "assert issubclass(quic.ServerQuicLayer, layers.ServerQuicLayer)\n"
        "assert http.Http3Client.__name__ == 'Http3Client'\n"
        "layer = object.__new__(quic.ClientQuicLayer)  # (a real one needs a running master)\n"
        "assert isinstance(layer, layers.ClientQuicLayer)\n"
        "assert not isinstance(layer, layers.ServerQuicLayer)\n"
        "assert next_layer.quic_parse_client_hello_from_datagrams.__name__ == "
        "'quic_parse_client_hello_from_datagrams'\n"
        "print('ok')\n"
    )
    assert _run(code) == "ok"


def test_quic_stand_ins_step_aside_when_the_layout_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    # A name no longer where seam/quic.py expects it: nothing is replaced (the stock import).
    from vaultproxy.seam import quic

    monkeypatch.setitem(quic.STAND_INS, quic.QUIC, {"NoSuchLayer": f"{quic.QUIC}._raw_layers"})
    assert quic._kinds() is None
