"""vaultproxy: a credential proxy that keeps real secrets out of AI agents."""

__version__ = "0.1.0"
