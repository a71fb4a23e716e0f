"""vaultproxy: a credential proxy that keeps real secrets out of AI agents."""

import os as _os

# mitmproxy (at import) and Python's ssl.create_default_context (per context) would write TLS
# session keys, the injected credential's sessions included, to the file these name. Clear
# them before anything of ours imports either; seam/defences.py refuses traffic if mitmproxy
# was imported earlier and opened a key log anyway.
for _name in ("SSLKEYLOGFILE", "MITMPROXY_SSLKEYLOGFILE"):
    _os.environ.pop(_name, None)

__version__ = "0.1.0"
