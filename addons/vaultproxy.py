"""mitmdump entry point: `mitmdump -s addons/vaultproxy.py --set vaultproxy_home=DIR`.

A thin shim: all behaviour, including the gate that refuses traffic when this script fails
to (re)load, lives in the installed `vaultproxy` package.
"""

from vaultproxy.engine.mitmdump import make_addons

addons = make_addons()
