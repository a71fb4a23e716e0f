#!/bin/sh
# Create (once) and run a demo vaultproxy home. The demo master password is random and kept
# in DEMO/demo-password (0600): fine for a demo, never for real secrets.
set -eu
DEMO=${1:-demo-home}
VP=.venv/bin/vaultproxy
if [ ! -f "$DEMO/keystore.enc" ]; then
    mkdir -p "$DEMO" && chmod 700 "$DEMO"
    umask 077
    .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$DEMO/demo-password"
    "$VP" init --home "$DEMO" --password-file "$DEMO/demo-password"
    cat > "$DEMO/services.toml" <<'TOML'
# Demo registry: requests to httpbin.org get a bearer token injected.
# Try: curl --proxy http://127.0.0.1:3203 --cacert demo-home/ca.crt https://httpbin.org/headers
[[service]]
name = "httpbin"
hosts = ["httpbin.org"]
mode = "host_inject"
auth = "bearer"
env = "HTTPBIN_TOKEN"
TOML
    chmod 600 "$DEMO/services.toml"
    .venv/bin/python -c 'import secrets; print("demo_" + secrets.token_hex(16), end="")' \
        | "$VP" secret set httpbin --home "$DEMO" --password-file "$DEMO/demo-password"
fi
exec "$VP" run --home "$DEMO" --password-file "$DEMO/demo-password"
