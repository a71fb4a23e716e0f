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

Call ``lean()`` first thing in a process that will serve (``vaultproxy run``, a worker),
before anything imports mitmproxy.master or httpx; later it changes nothing for what is
already imported. ``missing_symbol`` is not needed: if mitmproxy's package layout changes,
``find_spec`` finds nothing and the stock import runs."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

ADDONS = "mitmproxy.addons"
PROMETHEUS = "prometheus_client"


def _lazy_package(package: str) -> ModuleType | None:
    """``package`` registered without running its ``__init__``: a submodule imports as usual;
    any other name the package defines runs the real ``__init__`` first."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return None
    mod = importlib.util.module_from_spec(spec)
    state = {"loaded": False}

    def __getattr__(name: str) -> Any:  # PEP 562: reached only for what is not there yet
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")  # as if __init__ had
        if not state["loaded"]:
            state["loaded"] = True
            assert spec.loader is not None
            spec.loader.exec_module(mod)  # the real __init__ (e.g. default_addons)
            if name in mod.__dict__:
                return mod.__dict__[name]
        raise AttributeError(name)

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def lean() -> None:
    """Register the lean ``mitmproxy.addons`` and hide ``httpx._main`` (see the module doc)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if PROMETHEUS not in sys.modules:  # audit/metrics.py imports only its submodules
        prom = _lazy_package(PROMETHEUS)
        if prom is not None:
            sys.modules[PROMETHEUS] = prom
    if ADDONS in sys.modules:
        return
    mod = _lazy_package(ADDONS)
    if mod is None:
        return
    sys.modules[ADDONS] = mod
    import mitmproxy

    mitmproxy.addons = mod  # type: ignore[attr-defined]
