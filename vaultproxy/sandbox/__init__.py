"""The agent sandbox of `vaultproxy exec` (Linux, bubblewrap).

- ``bwrap.py``     the bubblewrap command line (pure) and the availability check
- ``hide.py``      what is hidden, under every name (real path, mount aliases, hard links)
- ``seccomp.py``   the filter: an allowlist of system calls (no io_uring, no new Unix
                   socket, no terminal injection)
- ``launch.py``    the outer side: sandbox dir, spec hand-over, signals, exit status
- ``broker.py``    connections to the proxy's Unix socket, made outside, handed in
- ``inner.py``     ``python -m vaultproxy.sandbox.inner``: runs inside, starts the forwarder,
                   spawns the agent, reports its status
- ``forwarder.py`` inside the network namespace: 127.0.0.1:PORT -> the proxy
- ``runtimes.py``  commands known to ignore ``HTTPS_PROXY`` (a warning, not a check)
"""
