"""Helpers shared by test folders: free loopback ports and a rule-based authorizer."""

from __future__ import annotations

import socket


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RuleAuthorizer:
    """An authorizer whose answers the test sets: versions, denials, visibility.

    Every user exists with token version 0 unless ``versions`` says otherwise;
    contexts under ``/forbidden`` and the pairs in ``denied`` are refused.
    """

    def __init__(self) -> None:
        self.versions: dict[str, int | None] = {}
        self.denied: set[tuple[str, str]] = set()
        self.visibility: dict[str, set[str]] = {}

    async def token_version(self, user_id: str) -> int | None:
        return self.versions.get(user_id, 0)

    async def forbidden_contexts(self, user_id: str, contexts) -> list[str]:
        return [
            context for context in contexts
            if context.startswith("/forbidden") or (user_id, context) in self.denied
        ]

    async def visible_users(self, user_id: str) -> frozenset[str]:
        return frozenset(self.visibility.get(user_id, ()))
