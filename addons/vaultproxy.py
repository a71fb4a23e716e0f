"""mitmdump entry point: `mitmdump -s addons/vaultproxy.py --set vaultproxy_home=DIR`.

A thin shim: all behaviour, including the gate that refuses traffic when this script fails
to (re)load, lives in the installed `vaultproxy` package.
"""

import os
import sys

# mitmproxy puts this script's folder first on sys.path, where this very file would shadow
# the `vaultproxy` package; take the folder (and any such shadow) out before importing.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
if not hasattr(sys.modules.get("vaultproxy"), "__path__"):
    sys.modules.pop("vaultproxy", None)

from vaultproxy.engine.mitmdump import make_addons  # noqa: E402

addons = make_addons()
