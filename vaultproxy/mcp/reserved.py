"""The reserved MCP host (SPEC §11), shared by the proxy stage that answers it and the admin
endpoint it relays to."""

RESERVED_HOST = "vaultproxy.internal"
MCP_PATH = "/mcp"
#: The agent the proxy proved for a relayed call; the admin endpoint honours it only together
#: with the admin token (which only the proxy and the operator hold).
AGENT_HEADER = "X-Vaultproxy-Mcp-Agent"
ANONYMOUS = "-"
#: ... and the identity of the token it proved (``AgentRecord.identity``): a relayed name
#: is honoured only while the same agent (not a new one of that name) holds it.
AGENT_ID_HEADER = "X-Vaultproxy-Mcp-Agent-Id"
SESSION_HEADER = "mcp-session-id"
