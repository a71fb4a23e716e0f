"""The MCP server (SPEC §11): tools over the official ``mcp`` SDK, served on the admin
listener's ``/mcp``, at the reserved host ``vaultproxy.internal`` and over stdio."""
