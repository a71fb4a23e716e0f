"""Credential injection: one strategy per auth type, and ``prepare_request`` that applies it."""

from vaultproxy.inject.body import body_context, substitute_body
from vaultproxy.inject.request import (
    STRATEGIES,
    STRIP_HEADERS,
    InjectResult,
    placeholder_secret,
    prepare_request,
    strategy_for,
    substitute_request_body,
)
from vaultproxy.inject.strategy import Draft, Strategy

__all__ = [
    "STRATEGIES",
    "STRIP_HEADERS",
    "Draft",
    "InjectResult",
    "Strategy",
    "body_context",
    "placeholder_secret",
    "prepare_request",
    "strategy_for",
    "substitute_body",
    "substitute_request_body",
]
