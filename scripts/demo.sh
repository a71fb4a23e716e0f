#!/bin/sh
# Create (once) and run a demo vaultproxy home with its own local upstream, so the README's
# Quickstart works offline:
#   scripts/demo_echo.py  an HTTPS echo service for echo.demo.internal on 127.0.0.1 (a free
#                         port), its certificate from a demo CA the demo service trusts
#   vaultproxy run        on 127.0.0.1:$DEMO_PORT (default 3203), admin on $DEMO_ADMIN_PORT
#                         (default 3201)
# Both stop together (Ctrl-C). The demo master password is random and kept in
# DEMO.password beside the home (0600): fine for a demo, never for real secrets.
set -eu
DEMO=${1:-demo-home}
PORT=${DEMO_PORT:-3203}
ADMIN_PORT=${DEMO_ADMIN_PORT:-3201}
DASHBOARD_PORT=${DEMO_DASHBOARD_PORT:-3202}
VP=.venv/bin/vaultproxy
PW="$DEMO.password"
umask 077
if [ ! -f "$DEMO/keystore.enc" ]; then
    mkdir -p "$DEMO" && chmod 700 "$DEMO"
    .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$PW"
    "$VP" init --home "$DEMO" --password-file "$PW"
fi
if [ ! -f "$PW" ] && [ -f "$DEMO/demo-password" ]; then
    mv "$DEMO/demo-password" "$PW"   # older demo homes kept it inside the home
fi

rm -f "$DEMO/echo.port"
.venv/bin/python scripts/demo_echo.py "$DEMO" &
ECHO_PID=$!
# A background job of a non-interactive sh ignores SIGINT, so Ctrl-C reaches the echo
# service only through this trap; wait for it so nothing outlives `make demo`.
trap 'kill $ECHO_PID 2>/dev/null && wait $ECHO_PID 2>/dev/null; true' EXIT INT TERM
i=0
while [ ! -s "$DEMO/echo.port" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 $ECHO_PID 2>/dev/null; then
        echo "demo: the echo service did not start" >&2
        exit 1
    fi
    sleep 0.1
done
ECHO_PORT=$(cat "$DEMO/echo.port")

cat > "$DEMO/services.toml" <<TOML
# Demo registry (rewritten by every \`make demo\`).
#
# echo.demo.internal is the local echo service started by \`make demo\` (scripts/demo_echo.py):
# connect_to dials it on loopback, ca_cert trusts its demo CA. Requests to it get
# "Authorization: Bearer <the demo secret>"; the echo you get back shows the placeholder.
# Try: curl --proxy http://127.0.0.1:$PORT --cacert $DEMO/ca.crt https://echo.demo.internal/headers
[[service]]
name = "echo"
hosts = ["echo.demo.internal"]
mode = "host_inject"
auth = "bearer"
secret = "demo"
env = "ECHO_TOKEN"
connect_to = "127.0.0.1:$ECHO_PORT"
allow_loopback = true
ca_cert = "echo-ca.pem"

# The same secret for a real internet host (optional; needs the internet).
[[service]]
name = "httpbin"
hosts = ["httpbin.org"]
mode = "host_inject"
auth = "bearer"
secret = "demo"
env = "HTTPBIN_TOKEN"
TOML
chmod 600 "$DEMO/services.toml"

if ! "$VP" secret list --home "$DEMO" --password-file "$PW" | grep -q '^demo '; then
    .venv/bin/python -c 'import secrets; print("demo_" + secrets.token_hex(16), end="")' \
        | "$VP" secret set demo --home "$DEMO" --password-file "$PW"
fi
echo "demo: in another shell, once ready below: curl --proxy http://127.0.0.1:$PORT --cacert $DEMO/ca.crt https://echo.demo.internal/headers"
"$VP" run --home "$DEMO" --password-file "$PW" \
    --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --dashboard-listen "127.0.0.1:$DASHBOARD_PORT"
