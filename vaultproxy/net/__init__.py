"""The network edge every entry shares: the egress (SSRF) address policy, connect-time
resolution, the one place httpx clients are built, host-name comparisons, byte
splicing and content codings. Imports nothing of vaultproxy but ``errors``."""
