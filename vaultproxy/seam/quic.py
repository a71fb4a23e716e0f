"""mitmproxy without aioquic until something speaks QUIC (a speed patch: memory and start-up
time, nothing else; see seam/imports.py).

The proxy never listens on UDP, so it never builds a QUIC or HTTP/3 layer; still, four
mitmproxy modules it needs import QUIC names at their own import: ``mitmproxy.proxy.layers``
and its HTTP layer (the QUIC layer classes, ``Http3Client``/``Http3Server``), the
``tlsconfig`` addon (aioquic's ``H3_ALPN`` and ``CipherSuite``, ``quic.QuicTlsData`` in an
annotation) and ``next_layer`` (the layer classes, the QUIC ClientHello parser). That loads
aioquic with its TLS stack and extension modules: ~6 MiB per process.

While each of those four modules runs its own code (and only then), ``mitmproxy.proxy.
layers.quic``, ``mitmproxy.proxy.layers.http._http3``, ``aioquic.h3.connection`` and
``aioquic.tls`` are stand-in modules in ``sys.modules``: what the four import by name is a
stand-in that imports the real module on first use (calling a class or function, an
attribute, iterating) and answers ``isinstance``/``issubclass`` as the real class would (no
instance of it can exist before its module is loaded). The QUIC event classes the HTTP layer
checks on every event come from their real, aioquic-free modules. Afterwards the stand-in
modules are gone: any other import of those modules is the stock one.

Before anything is replaced, the source files are read to check that every stand-in's name
is still defined at the top level of the module it forwards to; if mitmproxy or aioquic moved
one, ``install`` does nothing and the stock imports run."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

QUIC = "mitmproxy.proxy.layers.quic"
HTTP3 = "mitmproxy.proxy.layers.http._http3"

# stand-in module -> {name: the module that defines it (where a stand-in forwards to)}
STAND_INS: dict[str, dict[str, str]] = {
    QUIC: {
        "ClientQuicLayer": f"{QUIC}._stream_layers",
        "ServerQuicLayer": f"{QUIC}._stream_layers",
        "error_code_to_str": f"{QUIC}._stream_layers",
        "QuicStreamLayer": f"{QUIC}._raw_layers",
        "RawQuicLayer": f"{QUIC}._raw_layers",
        "quic_parse_client_hello_from_datagrams": f"{QUIC}._client_hello_parser",
        "QuicTlsData": f"{QUIC}._hooks",
        "QuicTlsSettings": f"{QUIC}._hooks",
        "QuicStartClientHook": f"{QUIC}._hooks",
        "QuicStartServerHook": f"{QUIC}._hooks",
    },
    HTTP3: {"Http3Client": HTTP3, "Http3Server": HTTP3},
    "aioquic.h3.connection": {"H3_ALPN": "aioquic.h3.connection"},
    "aioquic.tls": {"CipherSuite": "aioquic.tls"},
}
# QUIC names the HTTP layer uses on every event, from modules that do not import aioquic
LIGHT = (f"{QUIC}._events", f"{QUIC}._commands")
IMPORTERS = frozenset({
    "mitmproxy.proxy.layers",
    "mitmproxy.proxy.layers.http",
    "mitmproxy.addons.tlsconfig",
    "mitmproxy.addons.next_layer",
})


def _real(home: str, name: str) -> Any:
    module = sys.modules.get(home)
    if isinstance(module, _StandInModule):  # used while an importer runs: load for real
        del sys.modules[home]
    return getattr(importlib.import_module(home), name)


def _loaded(home: str, name: str) -> Any:
    """The real object if its module is loaded, else None (then no instance exists)."""
    module = sys.modules.get(home)
    if module is None or isinstance(module, _StandInModule):
        return None
    return getattr(module, name, None)


class _StandInClass(type):
    """The metaclass of a stand-in for a class of a module not loaded yet."""

    _home: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return _real(cls._home, cls.__name__)(*args, **kwargs)

    def __instancecheck__(cls, obj: Any) -> bool:
        real = _loaded(cls._home, cls.__name__)
        return real is not None and isinstance(obj, real)

    def __subclasscheck__(cls, sub: type) -> bool:
        real = _loaded(cls._home, cls.__name__)
        return real is not None and issubclass(sub, real)

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_real(cls._home, cls.__name__), attr)

    def __getitem__(cls, key: Any) -> Any:  # CipherSuite["AES_128_GCM_SHA256"]
        return _real(cls._home, cls.__name__)[key]

    def __iter__(cls) -> Iterator[Any]:
        return iter(_real(cls._home, cls.__name__))


class _StandInSequence(Sequence[Any]):
    """A stand-in for a module-level list (aioquic's ``H3_ALPN``)."""

    def __init__(self, home: str, name: str) -> None:
        self._home, self._name = home, name

    def __getitem__(self, i: Any) -> Any:
        return _real(self._home, self._name)[i]

    def __len__(self) -> int:
        return len(_real(self._home, self._name))


def _stand_in(home: str, name: str, kind: str) -> Any:
    if kind == "class":
        return _StandInClass(name, (), {"_home": home, "__module__": home})
    if kind == "def":
        def forward(*args: Any, **kwargs: Any) -> Any:
            return _real(home, name)(*args, **kwargs)

        forward.__name__ = forward.__qualname__ = name
        return forward
    return _StandInSequence(home, name)


class _StandInModule(ModuleType):
    """A stand-in module: its stand-ins, the light QUIC names, else the real module's."""

    _light: tuple[str, ...] = ()

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for light in self._light:
            module = importlib.import_module(light)
            if attr in vars(module):
                return vars(module)[attr]
        return _real(self.__name__, attr)


def _file(module: str) -> Path | None:
    """``module``'s source file, found without importing its package."""
    spec = importlib.util.find_spec(module.split(".", 1)[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))).parent
    for path in (base / (module.replace(".", "/") + ".py"),
                 base / module.replace(".", "/") / "__init__.py"):
        if path.is_file():
            return path
    return None


def _source(module: str) -> str | None:
    path = _file(module)
    return path.read_text(encoding="utf-8") if path is not None else None


def _kinds() -> dict[tuple[str, str], str] | None:
    """What each stand-in's name is in its home module (class, def or a list), or None when
    one is not defined there at the top level any more."""
    out: dict[tuple[str, str], str] = {}
    texts: dict[str, str | None] = {}
    for names in STAND_INS.values():
        for name, home in names.items():
            text = texts.setdefault(home, _source(home))
            if text is None:
                return None
            m = re.search(rf"^(class|def) {re.escape(name)}\b|^{re.escape(name)} = \[",
                          text, re.MULTILINE)
            if m is None:
                return None
            out[(home, name)] = m.group(1) or "list"
    return out


class _Loader(importlib.abc.Loader):
    """An importer's own loader, run with the stand-in modules in place."""

    def __init__(self, real: importlib.abc.Loader, stand_ins: Callable[[], dict[str, ModuleType]]
                 ) -> None:
        self._real = real
        self._stand_ins = stand_ins

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        placed = []
        for name, stand_in in self._stand_ins().items():
            if name not in sys.modules:
                sys.modules[name] = stand_in
                placed.append((name, stand_in))
        try:
            self._real.exec_module(module)
        finally:
            for name, stand_in in placed:
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]

    def __getattr__(self, attr: str) -> Any:  # get_source, get_code, is_package, ...
        return getattr(self._real, attr)


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, stand_ins: dict[str, ModuleType]) -> None:
        self._stand_ins = stand_ins

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in IMPORTERS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, lambda: self._stand_ins)
        return spec


def install() -> bool:
    """Put the finder in place (see the module doc); False when the layout moved, aioquic is
    not installed, or an importer or aioquic is already loaded (then nothing changes)."""
    if any(name in sys.modules for name in (*IMPORTERS, "aioquic.tls", QUIC)):
        return False
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return True
    kinds = _kinds()
    if kinds is None:
        return False
    stand_ins: dict[str, ModuleType] = {}
    for module, names in STAND_INS.items():
        mod = _StandInModule(module)
        if module == QUIC:
            package = _file(QUIC)
            if package is None or package.name != "__init__.py":
                return False
            mod._light = LIGHT
            mod.__path__ = [str(package.parent)]  # the real, light submodules import as usual
        for name, home in names.items():
            setattr(mod, name, _stand_in(home, name, kinds[(home, name)]))
        stand_ins[module] = mod
    sys.meta_path.insert(0, _Finder(stand_ins))
    return True

