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
# A re-issued CA (`vaultproxy ca reissue`) replaces its earlier certificate (same subject).
# VAULTPROXY_ANCHOR_DIR overrides the anchors directory (packaging, tests).
case "$OS" in
debian)
    dir="${VAULTPROXY_ANCHOR_DIR:-/usr/local/share/ca-certificates}"
    replace_older "$dir" crt "$name"
    run install -m 0644 "$CERT" "$dir/$name.crt"
    run update-ca-certificates --fresh ;;
fedora)
    dir="${VAULTPROXY_ANCHOR_DIR:-/etc/pki/ca-trust/source/anchors}"
    replace_older "$dir" pem "$name"
    run install -m 0644 "$CERT" "$dir/$name.pem"
    run update-ca-trust extract ;;
macos)
    run security delete-certificate -c "$(cert_cn "$CERT")" /Library/Keychains/System.keychain \
        || say "(no earlier certificate of this CA in the System keychain)"
    run security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain "$CERT" ;;
esac
say "done${DRY_RUN:+ (dry run, nothing changed)}"
