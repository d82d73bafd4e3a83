"""Presence shared by the event-service nodes through Redis.

Each node keeps its own ``PresenceTracker`` for the connections it serves
(grace periods included) and mirrors them in Redis, one entry per
connection, so that joins and leaves are decided for the whole cluster:

``{prefix}presence:{context}:user:{user}``
    sorted set of ``{node}|{connection}`` entries, scored by the time (Redis
    server clock, in seconds) at which the entry expires.
``{prefix}presence:{context}:users``
    sorted set of users, scored by the latest expiry of their entries; the
    users with a score in the future are present.
``{prefix}presence:{context}:open``
    sorted set of ``{node}|{connection}|{user}`` entries of connections that
    hold the context now, scored like the user entries. A connection leaves
    it at once when it releases the context, while its user entry waits out
    the grace period, so this set lists who is looking at a conversation
    right now.
``{prefix}presence:node:{node}``
    set of the contexts where the node has written entries, so a restarted
    node can find and clear what it left behind.

Every change runs as one Lua script, so when two nodes race, exactly one of
them sees a user's first entry appear (and publishes ``presence.join``) or
their last entry go (and publishes ``presence.leave``). Nodes refresh their
entries with heartbeats; the entries of a node that stops heartbeating
expire after the time to live, and the next sweep by any node publishes the
leaves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis.asyncio as redis

logger = logging.getLogger(__name__)

# KEYS[1] users set, KEYS[2] user's entries, KEYS[3] node's contexts, KEYS[4] open set;
# ARGV: user, entry, ttl, context. Returns 1 if the user had no live entry before.
_JOIN = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local expires = now + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local was_empty = redis.call('ZCARD', KEYS[2]) == 0
redis.call('ZADD', KEYS[2], expires, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[4], expires, ARGV[2] .. '|' .. ARGV[1])
redis.call('ZADD', KEYS[1], 'GT', expires, ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
if was_empty then return 1 else return 0 end
"""

# KEYS[1] users set, KEYS[2] user's entries, KEYS[3] open set; ARGV: user, entries to remove...
# Returns 1 if the user has no live entry left (and was removed).
_REMOVE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('ZREM', KEYS[3], ARGV[i] .. '|' .. ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[2])
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS[1] users set, KEYS[2] user's entries, KEYS[3] open set; ARGV: user, ttl, entries...
# An entry gone from the open set (its connection released the context) stays gone.
_REFRESH = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local expires = now + tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[2], expires, ARGV[i])
  redis.call('ZADD', KEYS[3], 'XX', expires, ARGV[i] .. '|' .. ARGV[1])
end
redis.call('ZADD', KEYS[1], 'GT', expires, ARGV[1])
return 1
"""

# KEYS[1] users set; ARGV: the prefix of the user keys ("...:user:").
# Returns the users whose entries have all expired, after removing them.
_SWEEP = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local gone = {}
for _, user in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local key = ARGV[1] .. user
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #newest == 0 then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], user)
    table.insert(gone, user)
  else
    redis.call('ZADD', KEYS[1], newest[2], user)
  end
end
return gone
"""

# KEYS[1] users set, KEYS[2] open set; ARGV: the prefix of the user keys, the node's
# entry prefix ("node|"). Removes the node's entries on one context; returns the
# users left with none.
_CLEAR_NODE = """
local gone = {}
local mine = ARGV[2]
for _, entry in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(entry, 1, #mine) == mine then redis.call('ZREM', KEYS[2], entry) end
end
for _, user in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. user
  for _, entry in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    if string.sub(entry, 1, #mine) == mine then redis.call('ZREM', key, entry) end
  end
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], user)
    table.insert(gone, user)
  end
end
return gone
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class ClusterPresence:
    """One node's view of the presence entries in Redis."""

    def __init__(self, client: redis.Redis, *, node_id: str, prefix: str, ttl_seconds: float) -> None:
        if "|" in node_id:
            raise ValueError(f"node id {node_id!r} must not contain '|'; choose another")
        self.node_id = node_id
        self.ttl_seconds = ttl_seconds
        self._client = client
        self._prefix = f"{prefix}presence:"
        self._join = client.register_script(_JOIN)
        self._remove = client.register_script(_REMOVE)
        self._refresh = client.register_script(_REFRESH)
        self._sweep = client.register_script(_SWEEP)
        self._clear_node = client.register_script(_CLEAR_NODE)

    def _users_key(self, context: str) -> str:
        return f"{self._prefix}{context}:users"

    def _open_key(self, context: str) -> str:
        return f"{self._prefix}{context}:open"

    def _user_prefix(self, context: str) -> str:
        return f"{self._prefix}{context}:user:"

    def _node_key(self) -> str:
        return f"{self._prefix}node:{self.node_id}"

    def entry(self, connection_id: int) -> str:
        """Return the Redis entry of one of this node's connections."""
        return f"{self.node_id}|{connection_id}"

    async def join(self, context: str, user_id: str, connection_id: int) -> bool:
        """Add a connection's entry; return True if the user was not present anywhere."""
        result = await self._join(
            keys=[self._users_key(context), self._user_prefix(context) + user_id, self._node_key(),
                  self._open_key(context)],
            args=[user_id, self.entry(connection_id), self.ttl_seconds, context],
        )
        return bool(result)

    async def close(self, context: str, user_id: str, connection_id: int) -> None:
        """Note that a connection released ``context``; its user entry stays for the grace."""
        await self._client.zrem(self._open_key(context),
                                f"{self.entry(connection_id)}|{user_id}")

    async def remove(self, context: str, user_id: str, connection_ids: Iterable[int]) -> bool:
        """Remove connections' entries; return True if the user is now present nowhere."""
        result = await self._remove(
            keys=[self._users_key(context), self._user_prefix(context) + user_id,
                  self._open_key(context)],
            args=[user_id, *(self.entry(c) for c in connection_ids)],
        )
        return bool(result)

    async def refresh(self, entries: dict[tuple[str, str], list[int]]) -> None:
        """Push the expiry of each ``(context, user) -> connections`` entry one TTL ahead."""
        async with self._client.pipeline(transaction=False) as pipe:
            for (context, user_id), connection_ids in entries.items():
                if connection_ids:
                    await self._refresh(
                        keys=[self._users_key(context), self._user_prefix(context) + user_id,
                              self._open_key(context)],
                        args=[user_id, self.ttl_seconds, *(self.entry(c) for c in connection_ids)],
                        client=pipe,
                    )
            await pipe.execute()

    async def sweep(self, context: str) -> list[str]:
        """Remove users whose entries all expired; return them (each to one caller only)."""
        gone = await self._sweep(keys=[self._users_key(context)],
                                 args=[self._user_prefix(context)])
        return [_text(user) for user in gone]

    async def users(self, context: str) -> list[str]:
        """Return the users present on ``context`` anywhere in the cluster."""
        seconds, microseconds = await self._client.time()
        now = seconds + microseconds / 1e6
        return [_text(u) for u in await self._client.zrangebyscore(self._users_key(context), now, "+inf")]

    async def viewers(self, context: str) -> set[str]:
        """Return the users with a connection subscribed to ``context`` now, grace excluded."""
        seconds, microseconds = await self._client.time()
        now = seconds + microseconds / 1e6
        entries = await self._client.zrangebyscore(self._open_key(context), now, "+inf")
        # An entry is "{node}|{connection}|{user}", and node ids contain no "|".
        return {_text(entry).split("|", 2)[2] for entry in entries}

    async def clear_node(self) -> list[tuple[str, str]]:
        """Remove every entry this node left behind; return ``(context, user)`` now absent."""
        contexts = [_text(c) for c in await self._client.smembers(self._node_key())]
        gone: list[tuple[str, str]] = []
        for context in contexts:
            users = await self._clear_node(
                keys=[self._users_key(context), self._open_key(context)],
                args=[self._user_prefix(context), f"{self.node_id}|"],
            )
            gone.extend((context, _text(user)) for user in users)
        await self._client.delete(self._node_key())
        if contexts:
            logger.info("node %s cleared its old presence entries on %d contexts (%d users gone)",
                        self.node_id, len(contexts), len(gone))
        return gone
