"""The OpenAPI 3.1 document of the HTTP API, served at ``/api/openapi.json``.

The document is written out here rather than derived from the handlers, so
it states the contract the handlers must keep. The schemathesis tests in
``tests/chat/test_api_schema.py`` send generated requests to a running API
and check every response against this document.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from kilo_web.chat.content import BLOCK_TYPES, MAX_BLOCKS, MAX_MESSAGE_CHARS
from kilo_web.chat.limits import TYPING_INTERVAL_SECONDS
from kilo_web.chat.models import (
    CLIENT_MESSAGE_ID_MAX_LENGTH,
    DISPLAY_NAME_MAX_LENGTH,
    LABEL_MAX_LENGTH,
)
from kilo_web.chat.service import MAX_PAGE_SIZE

Schema = dict[str, Any]

_ERROR_TEXT = {
    400: "The request is malformed; the message names the value.",
    401: "Credentials are missing, unknown, expired or revoked.",
    403: "The caller may not do this (not a member, not the owner, or a bot).",
    404: "No such resource, or none the caller may see.",
    409: "A resource with the same unique name or id already exists.",
    410: "The message was deleted and cannot be edited.",
    429: "Too many messages or edits; the Retry-After header says when to send again.",
    503: "The database is unavailable; nothing was changed, so send the request again.",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    *,
    ok: dict[int, tuple[Schema | None, str]],
    errors: tuple[int, ...],
    body: Schema | None = None,
    body_required: bool = True,
    parameters: list[Schema] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    # A success without a schema has no body (204).
    responses: dict[str, Any] = {
        str(status): _json(schema, text) if schema is not None else {"description": text}
        for status, (schema, text) in ok.items()
    }
    # Any request may be malformed (a NUL in a parameter, say) or meet a
    # database outage, and any but this document's needs credentials.
    for status in sorted({*errors, 400, 503, *(() if public else (401,))}):
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    operation: dict[str, Any] = {"summary": summary, "responses": dict(sorted(responses.items()))}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body}},
        }
    if public:
        operation["security"] = []
    return operation


def _path(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema,
            "description": description}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_INT = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_CONVERSATION_ID = _path("conversation_id", {"type": "string"}, "The conversation's id.")
_INSTANCE_ID = _path("instance_id", {"type": "string"}, "The instance's id.")
_BOT_ID = _path("bot_id", _INT, "The bot's user id.")
_MESSAGE_ID = _path("message_id", _INT, "The message's id.")
_TIMESTAMP = {"type": "string", "format": "date-time"}

_SCHEMAS: dict[str, Schema] = {
    "Error": _object({
        "error": _object({
            "code": {"type": "string", "description": "A stable, machine-readable code."},
            "message": {"type": "string", "description": "What was wrong and what to do."},
        }),
    }),
    "Token": _object({
        "token": {"type": "string", "description": "The token: a session token or a JWT."},
        "expiresAt": {"type": "string", "format": "date-time"},
        "userId": {"type": "integer"},
    }),
    "Me": _object({
        "id": {"type": "integer"},
        "username": {"type": "string"},
        "displayName": {"type": "string"},
        "isBot": {"type": "boolean"},
        "instanceId": _nullable({"type": "string"}),
    }),
    "Device": _object({
        "id": {"type": "integer"},
        "kind": {"enum": ["expo", "webpush"]},
        "active": {"type": "boolean"},
        "origin": {"type": "string", "description": "A Web Push endpoint's origin."},
    }, optional=("origin",)),
    "DeviceRegistration": {
        "oneOf": [
            _object({"kind": {"const": "expo"}, "token": {"type": "string"}}),
            _object({
                "kind": {"const": "webpush"},
                "endpoint": {"type": "string"},
                "keys": _object({"p256dh": {"type": "string"}, "auth": {"type": "string"}}),
            }),
        ],
    },
    "Instance": _object({
        "id": {"type": "string"},
        "label": {"type": "string"},
        "ownerId": {"type": "integer"},
    }),
    "Conversation": _object({
        "id": {"type": "string"},
        "title": {"type": "string"},
        "instanceId": {"type": "string"},
        "unread": {"type": "integer", "minimum": 0},
    }),
    "Block": _object({
        "type": {"enum": sorted(BLOCK_TYPES)},
        "text": {"type": "string"},
    }),
    "Message": _object({
        "id": {"type": "integer"},
        "messageId": {"type": "integer", "description": "The same as id."},
        "conversationId": {"type": "string"},
        "instanceId": {"type": "string"},
        "seq": {"type": "integer", "minimum": 1},
        "senderId": {"type": "integer"},
        "senderDisplayName": {"type": "string"},
        "senderIsBot": {"type": "boolean"},
        "blocks": {"type": "array", "items": _ref("Block"),
                   "description": "Empty for a deleted message."},
        "createdAt": _TIMESTAMP,
        "clientMessageId": _nullable({"type": "string"}),
        "editedAt": _nullable(_TIMESTAMP),
        "deletedAt": _nullable(_TIMESTAMP),
    }),
    "MessageEdit": _object({
        "content": {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_CHARS},
                {"type": "array", "items": _ref("Block"), "minItems": 1, "maxItems": MAX_BLOCKS},
            ],
            "description": "The new text, or the new content blocks.",
        },
    }),
    "NewMessage": {
        "type": "object",
        "properties": {
            "text": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_CHARS},
            "blocks": {"type": "array", "items": _ref("Block"), "minItems": 1,
                       "maxItems": MAX_BLOCKS},
            "clientMessageId": {
                "type": "string",
                "pattern": f"^[A-Za-z0-9_.:-]{{1,{CLIENT_MESSAGE_ID_MAX_LENGTH}}}$",
                "description": "The sender's own id; a repeat returns the first message.",
            },
        },
        "anyOf": [{"required": ["text"]}, {"required": ["blocks"]}],
        "not": {"required": ["text", "blocks"]},
    },
    "UnreadSummary": _object({
        "userId": {"type": "integer"},
        "conversations": {"type": "object", "additionalProperties": {"type": "integer"}},
        "total": {"type": "integer", "minimum": 0},
        "badge": {"type": "integer", "minimum": 0},
    }),
    "Member": _object({
        "id": {"type": "integer"},
        "displayName": {"type": "string"},
        "isBot": {"type": "boolean"},
    }),
    "Bot": _object({
        "id": {"type": "integer"},
        "username": {"type": "string"},
        "displayName": {"type": "string"},
        "instanceId": {"type": "string"},
        "createdAt": {"type": "string", "format": "date-time"},
    }),
    "ApiKey": _object({
        "id": {"type": "string"},
        "botId": {"type": "integer"},
        "label": {"type": "string"},
        "createdAt": {"type": "string", "format": "date-time"},
        "lastUsedAt": _nullable({"type": "string", "format": "date-time"}),
        "revokedAt": _nullable({"type": "string", "format": "date-time"}),
        "key": {"type": "string", "description": "The key itself; only in the response that made it."},
    }, optional=("key",)),
}


def _paths() -> dict[str, Any]:
    message_body = _object({"message": _ref("Message")})
    return {
        "/api/openapi.json": {"get": _operation(
            "This document.", ok={200: ({"type": "object"}, "The OpenAPI document.")},
            errors=(), public=True,
        )},
        "/api/login": {
            "post": _operation(
                "Trade a username and password for a session token (30 days).",
                body=_object({"username": {"type": "string"}, "password": {"type": "string"}}),
                ok={201: (_ref("Token"), "The session token, its expiry and the user's id.")},
                errors=(400, 401), public=True,
            ),
            "delete": _operation(
                "End the session of the token that authenticates this request; people only.",
                ok={200: (_object({"loggedOut": {"const": True}}), "The session is over.")},
                errors=(403,),
            ),
        },
        "/api/token": {"post": _operation(
            "An event-service token for the caller (tokenSource \"bot\" for an API key).",
            ok={200: (_ref("Token"), "A token and its expiry.")}, errors=(),
        )},
        "/api/me": {"get": _operation(
            "The caller's account; for a bot, its instance.",
            ok={200: (_ref("Me"), "The caller.")}, errors=(),
        )},
        "/api/devices": {
            "get": _operation(
                "The caller's active push devices; people only.",
                ok={200: (_object({"devices": {"type": "array", "items": _ref("Device")}}),
                          "The devices.")},
                errors=(403,),
            ),
            "post": _operation(
                "Register an Expo push token or a Web Push subscription; people only.",
                body=_ref("DeviceRegistration"),
                ok={201: (_object({"device": _ref("Device")}), "The device.")},
                errors=(400, 403),
            ),
        },
        "/api/devices/{device_id}": {"delete": _operation(
            "Stop pushing to one of the caller's devices; people only.",
            parameters=[_path("device_id", _INT, "The device's id.")],
            ok={200: (_object({"removed": {"type": "integer"}}), "The device was removed.")},
            errors=(400, 403, 404),
        )},
        "/api/instances": {
            "get": _operation(
                "The instances the caller belongs to.",
                ok={200: (_object({"instances": {"type": "array", "items": _ref("Instance")}}),
                          "The instances.")},
                errors=(),
            ),
            "post": _operation(
                "Create an instance owned by the caller; people only.",
                body=_object({"label": {"type": "string", "minLength": 1,
                                        "maxLength": LABEL_MAX_LENGTH}}),
                ok={201: (_object({"instance": _ref("Instance")}), "The new instance.")},
                errors=(400, 403, 409),
            ),
        },
        "/api/instances/{instance_id}/bots": {
            "get": _operation(
                "The instance's bots; members only.",
                parameters=[_INSTANCE_ID],
                ok={200: (_object({"bots": {"type": "array", "items": _ref("Bot")}}),
                          "The bots.")},
                errors=(403, 404),
            ),
            "post": _operation(
                "Create a bot in the instance and its first API key; the owner only.",
                parameters=[_INSTANCE_ID],
                body=_object({
                    "username": {"type": "string"},
                    "displayName": {"type": "string", "maxLength": DISPLAY_NAME_MAX_LENGTH},
                    "keyLabel": {"type": "string", "maxLength": LABEL_MAX_LENGTH},
                }, optional=("displayName", "keyLabel")),
                ok={201: (_object({"bot": _ref("Bot"), "apiKey": _ref("ApiKey")}),
                          "The bot and its key, shown this once.")},
                errors=(400, 403, 404, 409),
            ),
        },
        "/api/bots/{bot_id}/keys": {
            "get": _operation(
                "The bot's API keys, revoked ones included, without secrets; the owner only.",
                parameters=[_BOT_ID],
                ok={200: (_object({"apiKeys": {"type": "array", "items": _ref("ApiKey")}}),
                          "The keys.")},
                errors=(400, 403, 404),
            ),
            "post": _operation(
                "A new API key for the bot, shown once; the owner only.",
                parameters=[_BOT_ID],
                body=_object({"label": {"type": "string", "maxLength": LABEL_MAX_LENGTH}},
                             optional=("label",)),
                body_required=False,
                ok={201: (_object({"apiKey": _ref("ApiKey")}), "The key.")},
                errors=(400, 403, 404),
            ),
        },
        "/api/bots/{bot_id}/keys/{key_id}": {"delete": _operation(
            "Revoke an API key at once; the owner only.",
            parameters=[_BOT_ID, _path("key_id", {"type": "string"}, "The key's id.")],
            ok={200: (_object({"apiKey": _ref("ApiKey")}), "The revoked key.")},
            errors=(400, 403, 404),
        )},
        "/api/conversations": {
            "get": _operation(
                "The caller's conversations with unread counts.",
                parameters=[_query("instanceId", {"type": "string"},
                                   "Only the conversations of this instance.")],
                ok={200: (_object({"conversations": {"type": "array",
                                                     "items": _ref("Conversation")}}),
                          "The conversations.")},
                errors=(),
            ),
            "post": _operation(
                "Create a conversation in an instance the caller belongs to; people only.",
                body=_object({
                    "instanceId": {"type": "string"},
                    "title": {"type": "string", "minLength": 1, "maxLength": LABEL_MAX_LENGTH},
                }),
                ok={201: (_object({"conversation": _ref("Conversation")}),
                          "The new conversation.")},
                errors=(400, 403, 404, 409),
            ),
        },
        "/api/conversations/{conversation_id}/messages": {
            "get": _operation(
                "A page of messages in seq order; members only.",
                parameters=[
                    _CONVERSATION_ID,
                    _query("before", _INT,
                           "Only messages with a lower seq: the previous page."),
                    _query("after", _INT,
                           "Only messages with a higher seq: catching up."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                           "The page size."),
                ],
                ok={200: (_object({
                    "messages": {"type": "array", "items": _ref("Message")},
                    "before": _nullable({"type": "integer"}),
                }), "The page and the cursor for the one before it.")},
                errors=(400, 403, 404),
            ),
            "post": _operation(
                "Post a message; members only. clientMessageId makes it idempotent.",
                parameters=[_CONVERSATION_ID],
                body=_ref("NewMessage"),
                ok={
                    201: (message_body, "The message was stored and published."),
                    200: (message_body, "A repeat: the message stored first."),
                },
                errors=(400, 403, 404, 429),
            ),
        },
        "/api/conversations/{conversation_id}/messages/{message_id}": {
            "patch": _operation(
                "Replace a message's content; its sender only. Counts against the message "
                "rate limit.",
                parameters=[_CONVERSATION_ID, _MESSAGE_ID],
                body=_ref("MessageEdit"),
                ok={200: (message_body, "The edited message; it was published as "
                                        "message.updated unless the content was unchanged.")},
                errors=(400, 403, 404, 410, 429),
            ),
            "delete": _operation(
                "Delete a message (soft delete: it stays in the history without content); "
                "its sender only. Deleting again is not an error.",
                parameters=[_CONVERSATION_ID, _MESSAGE_ID],
                ok={200: (message_body, "The message as deleted.")},
                errors=(400, 403, 404),
            ),
        },
        "/api/conversations/{conversation_id}/typing": {"post": _operation(
            "Tell the conversation's members that the caller is typing; members only. "
            f"Calls within {TYPING_INTERVAL_SECONDS:g} seconds of the last published one are "
            "dropped without an error.",
            parameters=[_CONVERSATION_ID],
            ok={204: (None, "Accepted; no body.")},
            errors=(400, 403, 404),
        )},
        "/api/conversations/{conversation_id}/read": {"post": _operation(
            "Mark the conversation read up to upToSeq, or to the newest message.",
            parameters=[_CONVERSATION_ID],
            body=_object({"upToSeq": _INT}, optional=("upToSeq",)),
            body_required=False,
            ok={200: (_ref("UnreadSummary"), "The caller's unread counts afterwards.")},
            errors=(400, 403, 404),
        )},
        "/api/conversations/{conversation_id}/members": {
            "get": _operation(
                "The conversation's members; members only.",
                parameters=[_CONVERSATION_ID],
                ok={200: (_object({"members": {"type": "array", "items": _ref("Member")}}),
                          "The members.")},
                errors=(403, 404),
            ),
            "post": _operation(
                "Add a person by username; members only, people only.",
                parameters=[_CONVERSATION_ID],
                body=_object({"username": {"type": "string", "minLength": 1}}),
                ok={
                    201: (_object({"member": _ref("Member"), "added": {"type": "boolean"}}),
                          "The person was added."),
                    200: (_object({"member": _ref("Member"), "added": {"type": "boolean"}}),
                          "The person was a member already."),
                },
                errors=(400, 403, 404),
            ),
        },
        "/api/conversations/{conversation_id}/members/{user_id}": {"delete": _operation(
            "Remove a member: every member may remove themselves (leave), only the "
            "instance's owner may remove others, and no one may remove a bot of the "
            "instance; people only. Removing a user who is not a member is not an error.",
            parameters=[_CONVERSATION_ID, _path("user_id", _INT, "The member's user id.")],
            ok={204: (None, "The user is not a member any more; no body.")},
            errors=(400, 403, 404),
        )},
    }


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kilo_web HTTP API",
            "version": "1",
            "description": (
                "Chat for people, bots, mobile apps and scripts. Authenticate with "
                "'Authorization: Bearer <session token or bot API key>'. Realtime events "
                "come from the event service; POST /api/token gives its token."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A login session token, or a bot's API key (kilo_bot_...).",
            }},
            "responses": {
                f"Error{status}": _json(_ref("Error"), text)
                for status, text in _ERROR_TEXT.items()
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    """Return a copy of the OpenAPI document."""
    return copy.deepcopy(_document())
