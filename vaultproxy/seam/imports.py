"""What the proxy's processes need not import: mitmproxy's default-addon package and httpx's
command-line client (a speed patch: memory and start-up time, nothing else).

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


def _lazy_addons() -> ModuleType | None:
    spec = importlib.util.find_spec(ADDONS)
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return None
    mod = importlib.util.module_from_spec(spec)

    def __getattr__(name: str) -> Any:  # PEP 562: reached only for what is not there yet
        if name == "default_addons":  # the real __init__: every default addon
            assert spec.loader is not None
            spec.loader.exec_module(mod)
            return mod.__dict__[name]
        if not name.startswith("__") and importlib.util.find_spec(f"{ADDONS}.{name}"):
            return importlib.import_module(f"{ADDONS}.{name}")  # as if __init__ had
        raise AttributeError(name)

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


def lean() -> None:
    """Register the lean ``mitmproxy.addons`` and hide ``httpx._main`` (see the module doc)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    if ADDONS in sys.modules:
        return
    mod = _lazy_addons()
    if mod is None:
        return
    sys.modules[ADDONS] = mod
    import mitmproxy

    mitmproxy.addons = mod  # type: ignore[attr-defined]
