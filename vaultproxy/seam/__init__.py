"""The engine seam: every use of mitmproxy's (and pyOpenSSL's) internals, in one package.

* ``defences`` (and ``openssl``): what must change for no secret to reach the agent and for
  upstream names to be verified. A missing symbol refuses start-up (``EngineMismatch``).
* ``speed`` (and ``dispatch``): cheaper hook dispatch and fewer per-flow checks. A missing
  symbol keeps mitmproxy's stock behaviour, with a WARNING naming it.
* ``reuseport``: shared listeners for ``--workers N``; missing, only ``--workers 1`` runs.

mitmproxy is pinned below its next minor in pyproject.toml; nothing outside this package
touches a private name of mitmproxy or pyOpenSSL.
"""
