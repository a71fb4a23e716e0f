"""Credential health: weak (strength.py), reused (HMAC fingerprints, report.py) and breached
(HIBP k-anonymity range API, hibp.py) verdicts per secret. Names and verdicts only: no value,
fingerprint or full hash ever leaves these modules. Output fields: docs/operator/HEALTH.md."""
