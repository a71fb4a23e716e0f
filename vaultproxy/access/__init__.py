"""Access control on top of routing (SPEC §10): per-service request rules, rate limits and
human approvals. ``rules``, ``ratelimit`` and ``approvals`` are pure (plain data in, plain data
out, an injectable clock); ``desk`` owns their live state in one process; ``enforce`` is the
one check every request entry (the proxy's stages, ``POST /proxy``) calls."""
