#!/bin/sh
# Trust the vaultproxy CA system-wide (Debian/Ubuntu, Fedora/RHEL, macOS).
# Usage: ca/trust.sh [--dry-run] [--os debian|fedora|macos] [CERT]
# CERT defaults to $VAULTPROXY_HOME/ca.crt (~/.config/vaultproxy/ca.crt). Prefer per-process
# trust (`vaultproxy exec`); see docs/operator/TRANSPARENT-CA.md before using this.
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
name="$(cert_name "$CERT")"
say "certificate: $CERT"
say "SHA-256:     $(cert_fp "$CERT")"
say "compare it with \`vaultproxy ca show\` before trusting it"
case "$OS" in
debian)
    run install -m 0644 "$CERT" "/usr/local/share/ca-certificates/$name.crt"
    run update-ca-certificates ;;
fedora)
    run install -m 0644 "$CERT" "/etc/pki/ca-trust/source/anchors/$name.pem"
    run update-ca-trust extract ;;
macos)
    run security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain "$CERT" ;;
esac
say "done${DRY_RUN:+ (dry run, nothing changed)}"
