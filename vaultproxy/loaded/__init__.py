"""What a loaded home gives a running proxy: the (host, port) registry and the config
snapshot of services.toml, and the session of the unlocked keystore. Each is
immutable or swapped whole on reload/lock (core/state.py holds them)."""
