#!/bin/sh
# Remove a vaultproxy CA from the system trust store (Debian/Ubuntu, Fedora/RHEL, macOS).
# Usage: ca/untrust.sh [--dry-run] [--os debian|fedora|macos] [CERT]
# CERT defaults to $VAULTPROXY_HOME/ca.crt; after `vaultproxy ca rotate --finish` pass
# ca.retired.crt to remove the old CA.
set -eu
. "$(dirname "$0")/common.sh"
parse_args "$@"
name="$(cert_name "$CERT")"
say "certificate: $CERT"
say "SHA-256:     $(cert_fp "$CERT")"
case "$OS" in
debian)
    run rm -f "/usr/local/share/ca-certificates/$name.crt"
    run update-ca-certificates --fresh ;;
fedora)
    run rm -f "/etc/pki/ca-trust/source/anchors/$name.pem"
    run update-ca-trust extract ;;
macos)
    run security remove-trusted-cert -d "$CERT"
    sha1="$(openssl x509 -in "$CERT" -noout -fingerprint -sha1 | sed 's/.*=//; s/://g')"
    run security delete-certificate -Z "$sha1" /Library/Keychains/System.keychain ;;
esac
say "done${DRY_RUN:+ (dry run, nothing changed)}"
