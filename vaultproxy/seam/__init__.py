"""The engine seam: every use of mitmproxy's (and pyOpenSSL's) internals, in one package.

* ``defences`` (and ``openssl``): what must change for no secret to reach the agent and for
  upstream names to be verified. A missing symbol refuses start-up (``EngineMismatch``).
* ``speed`` (and ``dispatch``): cheaper hook dispatch and fewer per-flow checks. A missing
  symbol keeps mitmproxy's stock behaviour, with a WARNING naming it.
* ``listener`` (and ``accept``): the proxy serves the one socket ``run`` bound, with an accept
  loop bounded under descriptor exhaustion; missing, ``run`` refuses to start.

mitmproxy is pinned below its next minor in pyproject.toml; nothing outside this package
touches a private name of mitmproxy or pyOpenSSL.
"""
