# Shared by trust.sh / untrust.sh (POSIX sh). Never touches ca.key.
DRY_RUN=""
OS=""
CERT=""

say() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

run() {
    if [ -n "$DRY_RUN" ]; then
        say "would run: $*"
    else
        say "+ $*"
        "$@"
    fi
}

detect_os() {
    if [ "$(uname -s)" = Darwin ]; then echo macos; return; fi
    if command -v update-ca-certificates >/dev/null 2>&1; then echo debian; return; fi
    if command -v update-ca-trust >/dev/null 2>&1; then echo fedora; return; fi
    die "unknown system: pass --os debian|fedora|macos"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
        --dry-run|-n) DRY_RUN=1 ;;
        --os) [ $# -ge 2 ] || die "--os needs a value"; OS="$2"; shift ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) CERT="$1" ;;
        esac
        shift
    done
    [ -n "$OS" ] || OS="$(detect_os)"
    case "$OS" in debian|fedora|macos) ;; *) die "--os must be debian, fedora or macos" ;; esac
    [ -n "$CERT" ] || CERT="${VAULTPROXY_HOME:-$HOME/.config/vaultproxy}/ca.crt"
    [ -f "$CERT" ] || die "no certificate at $CERT (run \`vaultproxy init\` first)"
    case "$CERT" in *.key) die "refusing a .key file: pass the certificate (ca.crt)" ;; esac
    if grep -q "PRIVATE KEY" "$CERT"; then die "$CERT holds a private key; pass ca.crt"; fi
    command -v openssl >/dev/null 2>&1 || die "openssl is needed to read the certificate"
    openssl x509 -in "$CERT" -noout >/dev/null 2>&1 || die "$CERT is not a PEM certificate"
    if [ -z "$DRY_RUN" ] && [ "$OS" != macos ] && [ "$(id -u)" -ne 0 ]; then
        die "run as root (sudo), or use --dry-run to see the commands"
    fi
}

cert_fp() { openssl x509 -in "$1" -noout -fingerprint -sha256 | sed 's/.*=//'; }

# A stable file name per CA, so two CAs (during a rotation) can be trusted side by side.
cert_name() {
    printf 'vaultproxy-%s' "$(cert_fp "$1" | tr -d ':' | cut -c1-16 | tr 'A-F' 'a-f')"
}

cert_subject() { openssl x509 -in "$1" -noout -subject -nameopt RFC2253 | sed 's/^subject=//'; }
cert_cn() { cert_subject "$1" | sed -n 's/.*CN=\([^,]*\).*/\1/p'; }

# Remove the earlier certificates of the same CA (same subject, other fingerprint) from an
# anchors directory: a re-issued CA (`vaultproxy ca reissue`, same key) must not stay
# trusted in its old, unconstrained form. A rotation's next CA has another subject: kept.
replace_older() {
    dir="$1"; ext="$2"; keep="$dir/$3.$ext"; subject="$(cert_subject "$CERT")"
    for old in "$dir"/vaultproxy-*."$ext"; do
        [ -f "$old" ] || continue
        [ "$old" = "$keep" ] && continue
        if [ "$(cert_subject "$old")" = "$subject" ]; then
            say "replacing the earlier certificate of this CA: $old"
            run rm -f "$old"
        fi
    done
}
