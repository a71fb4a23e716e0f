"""External secret sources (SPEC §9): one module per kind of store."""
