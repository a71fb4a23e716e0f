"""The reserved MCP host (SPEC §11), shared by the proxy stage that answers it and the admin
endpoint it relays to."""

RESERVED_HOST = "vaultproxy.internal"
MCP_PATH = "/mcp"
#: The agent the proxy proved for a relayed call; the admin endpoint honours it only together
#: with the admin token (which only the proxy and the operator hold).
AGENT_HEADER = "X-Vaultproxy-Mcp-Agent"
ANONYMOUS = "-"
