"""What the proxy's processes need not import: mitmproxy's default-addon package, httpx's
command-line client and prometheus_client's exposition servers (a speed patch: memory and
start-up time, nothing else).

``import mitmproxy.master`` runs ``mitmproxy/addons/__init__.py``, which imports all ~30
default addons and with them ldap3 (proxy auth), flask and werkzeug (the onboarding app and
map-local), pyparsing + unittest (flow filters): ~15 MiB and a good part of the start-up,
for a chain that uses six of those addons (engine/master.py). ``lean()`` registers the
package without running its ``__init__``: each addon module is still imported on demand
from the same directory, and ``default_addons`` (mitmproxy's own tools) runs the real
``__init__`` the first time it is asked for.

``httpx/__init__.py`` imports its CLI (``httpx._main``: rich, pygments, click) when those
are installed; with ``httpx._main`` marked absent, httpx takes its documented fallback
(a ``main`` that says the CLI is not installed). We never run httpx's CLI in-process.

``prometheus_client/__init__.py`` imports its exposition module (http.server, wsgiref,
urllib.request) that only the admin API's ``/metrics`` uses: the package is registered the
same way, so audit/metrics.py's submodule imports load only what a worker needs; the first
name asked of the package itself (``from prometheus_client import CONTENT_TYPE_LATEST``)
runs the real ``__init__``.

mitmproxy's command machinery (``mitmproxy.command``, which ``Master`` needs to collect the
addons' commands) imports pyparsing and its command lexer, which builds a pyparsing grammar
at import; pyparsing's ``__init__`` brings unittest and html too: ~3.5 MiB per process for
a parser only ``CommandManager.execute`` (a typed command line: the console, never the
proxy) uses. ``pyparsing`` is registered so its first attribute runs the real ``__init__``,
and ``mitmproxy.command_lexer`` so its grammar is built on first use; the one name
``mitmproxy.command`` imports from it at import time, ``unquote``, forwards to the real
function. ``ruamel.yaml`` (~1.5 MiB), which ``mitmproxy.optmanager`` imports only to read
and write option files (``--set`` files, ``options.save``), is registered the same way.

The compression codecs mitmproxy (``mitmproxy.net.encoding``) and httpx (``_decoders``)
import at import time, brotli and zstd (~0.9 MiB with their extension modules), are
registered the same way: the first ``br`` or ``zstd`` body loads its codec.

pydantic looks for plugins (the ``pydantic`` entry-point group) when it builds its first
model, through ``importlib.metadata`` (email, zipfile, csv: ~1.7 MiB, and a scan of every
installed distribution). A serving process runs with ``PYDANTIC_DISABLE_PLUGINS=__all__``
unless the environment already sets it (an empty value keeps plugins): no installed
package's plugin observes what the proxy validates (admin API bodies, audit records), and
``importlib.metadata`` is registered lazily, its ``entry_points`` and ``version`` (imported
by name) forwarding to the real functions.

Call ``lean()`` first thing in a process that will serve (``vaultproxy run``, a worker),
before anything imports mitmproxy.master or httpx; later it changes nothing for what is
already imported. ``missing_symbol`` is not needed: if mitmproxy's package layout changes,
``find_spec`` finds nothing and the stock import runs; a name the lazy module does not know
runs the real module first, so a moved name costs the saving, never the name."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from vaultproxy.seam import quic

ADDONS = "mitmproxy.addons"
PROMETHEUS = "prometheus_client"
COMMAND = "mitmproxy.command"
LEXER = "mitmproxy.command_lexer"
PYPARSING = "pyparsing"
YAML = "ruamel.yaml"
METADATA = "importlib.metadata"
CODECS = ("brotli", "zstandard", "backports.zstd")  # only a br/zstd body loads one
NO_PYDANTIC_PLUGINS = "PYDANTIC_DISABLE_PLUGINS"


def _lazy_module(
    name: str, *, submodules_first: bool = True
) -> tuple[ModuleType, Callable[[], None]] | None:
    """``name`` registered without running its code, and the function that runs it. With
    ``submodules_first`` (a package) a submodule imports as usual and any other name the
    package defines runs the real ``__init__`` first; without it, any name at all runs the
    real module first (for a plain module, or a package whose ``__init__`` rebinds a
    submodule's name: ``pyparsing.testing`` is a class there, not the module)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return None
    if submodules_first and not spec.submodule_search_locations:
        return None
    mod = importlib.util.module_from_spec(spec)
    loaded = [False]

    def load() -> None:
        if not loaded[0]:
            loaded[0] = True
            assert spec.loader is not None
            spec.loader.exec_module(mod)  # the real module (e.g. default_addons)

    def submodule(attr: str) -> ModuleType | None:
        if spec.submodule_search_locations and not attr.startswith("__"):
            if importlib.util.find_spec(f"{name}.{attr}") is not None:
                return importlib.import_module(f"{name}.{attr}")  # as if __init__ had
        return None

    def __getattr__(attr: str) -> Any:  # PEP 562: reached only for what is not there yet
        if attr == "__path__":  # the import system asks a plain module this
            raise AttributeError(attr)
        if submodules_first:
            if attr.startswith("__"):
                raise AttributeError(attr)
            if (sub := submodule(attr)) is not None:
                return sub
        load()
        if attr in mod.__dict__:
            return mod.__dict__[attr]
        if not submodules_first and (sub := submodule(attr)) is not None:
            return sub
        raise AttributeError(attr)

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod, load


def _forwarding(
    name: str, functions: tuple[str, ...]
) -> tuple[ModuleType, Callable[[], None]] | None:
    """A lazy ``name`` (a module) whose ``functions``, which other modules import by name at
    their own import, forward to the real ones: the first call runs the real module."""
    lazy = _lazy_module(name, submodules_first=False)
    if lazy is None:
        return None
    mod, load = lazy

    def forwarder(function: str) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            load()
            real = mod.__dict__.get(function)
            if real is None or real is forward:  # the module no longer has it
                raise AttributeError(f"{name}.{function}")
            return real(*args, **kwargs)

        forward.__name__ = forward.__qualname__ = function
        return forward

    for function in functions:
        setattr(mod, function, forwarder(function))
    return lazy


def _register(name: str, lazy: tuple[ModuleType, Callable[[], None]] | None) -> None:
    """Put the lazy module in ``sys.modules`` and on its parent package, as an import would."""
    if lazy is None:
        return
    sys.modules[name] = lazy[0]
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(importlib.import_module(parent), child, lazy[0])


def lean() -> None:
    """Register the lazy packages and hide ``httpx._main`` (see the module doc)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if PROMETHEUS not in sys.modules:  # audit/metrics.py imports only its submodules
        _register(PROMETHEUS, _lazy_module(PROMETHEUS))
    if COMMAND not in sys.modules:  # nothing has imported the lexer or pyparsing for it yet
        if PYPARSING not in sys.modules:
            _register(PYPARSING, _lazy_module(PYPARSING, submodules_first=False))
        if LEXER not in sys.modules:
            _register(LEXER, _forwarding(LEXER, ("unquote",)))
    if YAML not in sys.modules:
        _register(YAML, _lazy_module(YAML, submodules_first=False))
    if ADDONS not in sys.modules:
        _register(ADDONS, _lazy_module(ADDONS))
    quic.install()  # aioquic only when something speaks QUIC (seam/quic.py)
    for codec in CODECS:
        if codec not in sys.modules:
            _register(codec, _lazy_module(codec, submodules_first=False))
    os.environ.setdefault(NO_PYDANTIC_PLUGINS, "__all__")
    if METADATA not in sys.modules and os.environ[NO_PYDANTIC_PLUGINS] == "__all__":
        _register(METADATA, _forwarding(METADATA, ("entry_points", "version")))
