"""The commented services.toml that `vaultproxy init` writes. Valid as-is (no services)."""

from __future__ import annotations

EXAMPLE = '''\
# vaultproxy services.toml: which hosts get which credential.
#
# This file never holds a secret value. Secrets live in the encrypted keystore:
#     vaultproxy secret set openai            (value read from stdin or a hidden prompt)
# Check this file (and that every referenced secret exists) with:
#     vaultproxy check
# Full reference: docs/operator/SERVICES.md. Unknown keys are errors.

[proxy]
# What happens to hosts that no service lists:
#   "passthrough" = tunnelled untouched (no interception), "block" = refused (403).
egress = "passthrough"
# Addresses unregistered traffic may reach despite the private/loopback deny set:
# CIDRs ("10.1.0.0/16") or ip:port ("127.0.0.1:8080"). Only loopback and private ranges
# can be lifted: metadata, link-local, documentation, multicast... never (`check` says so).
passthrough_allow = []
# Largest body (MiB) buffered where a body must be inspected (1..4096); larger -> 413.
max_body_mb = 32
# Require agents to authenticate to the proxy (see `vaultproxy agent add`).
require_agent_auth = false
# Days a rotated or removed secret value stays redacted in responses (0..3650).
retired_redact_days = 30

# [agent]
# # Extra CA files (relative to this home) for the agents' CA bundle (SSL_CERT_FILE,
# # REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE... set by `vaultproxy env/exec`), e.g. the private CA
# # of an internal package index reached through passthrough. Or: vaultproxy ca bundle --add F
# extra_ca = ["corp-root-ca.pem"]

# [audit]
# # When audit.jsonl cannot be written (disk full...): "deny" (default) refuses requests
# # that would carry a credential (503 audit_unavailable); "continue" injects unaudited.
# on_failure = "deny"

# [approvals]
# # Requests a rule marks "approve" wait for `vaultproxy approvals --watch` (docs/operator/
# # APPROVALS.md): how long they wait, how long an approval "for grant_seconds" admits
# # again, and a program told about each one (run directly, the summary as last argument).
# hold_seconds = 60
# grant_seconds = 600
# notify_command = ["notify-send", "vaultproxy"]

# [[honeytoken]]
# # A decoy credential `vaultproxy env/exec` export like a real one; any use is refused
# # (403 honeytoken), audited and notified. Placeholder "__vault.<name>__" unless set.
# name = "aws-prod"
# env = "AWS_SECRET_ACCESS_KEY"

# One [[service]] table per upstream API. Uncomment and adapt.
#
# [[service]]
# name = "openai"                  # a-z 0-9 _ -, 1-64 chars, unique
# hosts = ["api.openai.com"]       # host or host:port (443 default); "[v6]:port";
#                                  # "*.example.com" matches exactly one extra label
# mode = "placeholder"             # "placeholder": replace the placeholder where the agent
#                                  # puts it; "host_inject": add the credential to every request
# auth = "bearer"                  # "bearer" | "header" | "basic" | "query_param"
# secret = "openai"                # keystore entry name (default: the service name)
# placeholder = "__vault.openai__" # default "__vault.<name>__"; or 8-128 of A-Za-z0-9._-
# substitute_in = ["auth"]         # placeholder mode: only the auth type's own slot (default);
#                                  # opt-ins, each a SECURITY warning: "header", "query",
#                                  # "path", "body"
# allow_range = false              # keep the agent's Range/If-Range headers (default: removed)
# env = "OPENAI_API_KEY"           # `vaultproxy env/exec` export this = the placeholder
# prewarm = 0                      # warm upstream connections opened per host at start/reload
#
# [[service]]
# name = "anthropic"
# hosts = ["api.anthropic.com"]
# mode = "host_inject"
# auth = "header"
# header_name = "x-api-key"        # auth = "header" only (required there)
# # prefix = "Token "              # auth = "header" only (optional)
#
# [[service]]
# name = "maps"
# hosts = ["maps.googleapis.com"]
# mode = "host_inject"
# auth = "query_param"
# param_name = "key"               # auth = "query_param" only (required there)
#
# [[service]]
# name = "lab-registry"
# hosts = ["registry.lab.internal:8443"]
# mode = "host_inject"
# auth = "basic"                   # keystore entry with fields "username" and "password":
#                                  #   vaultproxy secret set lab-registry --field username
#                                  #   vaultproxy secret set lab-registry --field password
# connect_to = "10.0.0.5:8443"     # dial this address instead of resolving the host
# allow_private = true             # permit RFC 1918 / ULA / CGNAT upstream addresses
# allow_loopback = false           # permit loopback upstreams (metadata/link-local: never)
# ca_cert = "lab-ca.pem"           # extra trust anchor, relative to the vaultproxy home
# insecure_tls = false             # skip upstream TLS verification (SECURITY warning;
#                                  # cannot be combined with ca_cert)

# Minted credentials (SPEC §4.1, docs/operator/SERVICES.md): vaultproxy obtains and renews
# the token itself; the agent never sees it, nor the refresh token or password behind it.
#
# [[service]]
# name = "graph"
# hosts = ["graph.example.com"]
# mode = "host_inject"
# auth = "oauth2_refresh"          # or "oauth2_client_credentials", "session", "unifi_dual"
# token_url = "https://login.example.com/oauth2/token"  # oauth2_*: https URL or "/path"
# scope = "offline_access read"    # oauth2_*
# client_auth = "basic"            # oauth2_*: "basic" | "post" (default: basic with a secret)
# # audience = "https://api.example.com"   # oauth2_client_credentials only
# # token_params = { resource = "urn:x" }  # oauth2_client_credentials only: extra form fields
# #   keystore, a field each: vaultproxy secret set graph --field client_id (refresh_token)
#
# [[service]]
# name = "npm"
# hosts = ["npm.lab.internal"]
# mode = "host_inject"
# auth = "session"                 # keystore fields "username" and "password"
# login_url = "/api/tokens"        # session/unifi_dual: a path or URL on the service's host
# login_body = '{"identity": "{username}", "secret": "{password}"}'   # session: JSON
# token_field = "token"            # session: dotted path of the token in the login answer
# session_cookie = false           # session: send the login's cookies instead of a token
# token_header = "Authorization: Bearer"   # session: "Name: Prefix" the token goes in
# allow_private = true

# Secrets can also come from OpenBao / HashiCorp Vault (KV v2) or Bitwarden / Vaultwarden,
# synced into the keystore by `vaultproxy sync` (docs/operator/SOURCES.md):
#
# [[source]]
# name = "bao"                     # a service then says: secret = "bao:team/openai#api_key"
# kind = "openbao"                 # "openbao" | "vault" | "bitwarden"
# url = "https://bao.internal:8200"
# auth = "token"                   # its credentials: vaultproxy secret set source.bao --field token
# refresh_seconds = 300            # 0 = only on `vaultproxy sync`
#
# Tokens in the path, AWS signatures, Google and GitHub App keys (SERVICES.md):
# [[service]]
# name = "telegram"
# hosts = ["api.telegram.org"]
# mode = "host_inject"
# auth = "path_prefix"
# path_prefix = "/bot{secret}"     # the agent's /getMe goes out as /bot<secret>/getMe
#
# [[service]]
# name = "s3"
# hosts = ["s3.amazonaws.com", "s3.us-east-1.amazonaws.com", "*.s3.us-east-1.amazonaws.com"]
# mode = "host_inject"
# auth = "aws_sigv4"               # fields access_key_id, secret_access_key (session_token)
# region = "us-east-1"
# aws_service = "s3"               # the signing name: "s3", "sts", "execute-api", ...
#
# [[service]]
# name = "gcs"
# hosts = ["storage.googleapis.com"]
# mode = "host_inject"
# auth = "google_service_account"  # field json = the key file
# scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]
#
# [[service]]
# name = "github"
# hosts = ["api.github.com"]
# mode = "host_inject"
# auth = "github_app"              # fields app_id, private_key, installation_id
# api_url = "https://api.github.com"  # the default; GitHub Enterprise: https://HOST/api/v3
#
# Request rules and rate limits (docs/operator/APPROVALS.md); any [[service]] takes them.
# First match wins; "*" in a path spans "/"; paths match in normalised form:
# rules = [{ method = "POST", path = "/repos/*/issues*", action = "approve" }]
# default_action = "allow"         # no rule matched: "allow" | "approve" | "deny"
# rate_limit = "120/min"           # per agent per service; over it: 429 + Retry-After
'''
