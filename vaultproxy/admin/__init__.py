"""The companion admin API (SPEC §6): keystore, secrets, reload, audit, metrics, /proxy.

``server.AdminServer`` binds 127.0.0.1:3201 (bearer token) and ``admin.sock`` (same uid,
SO_PEERCRED) and serves ``app.create_app()`` in the proxy's own event loop.
"""
