"""The event service, its wire protocol and the EventServiceClient SDK."""

from kilo_web.event_service import redact

from kilo_web.event_service.backplane import Backplane, InMemoryBackplane, Publisher
from kilo_web.event_service.client import CredentialsRejected, EventServiceClient
from kilo_web.event_service.contexts import (
    kiloclaw_conversation_context,
    kiloclaw_conversation_presence_context,
    kiloclaw_instance_context,
    kiloclaw_instance_presence_context,
    platform_presence_context,
    presence_context,
)
from kilo_web.event_service.protocol import Event
from kilo_web.event_service.server import EventServiceServer
from kilo_web.event_service.tokens import decode_token, issue_token, mint_token

redact.install()

__all__ = [
    "Backplane",
    "CredentialsRejected",
    "Event",
    "EventServiceClient",
    "EventServiceServer",
    "InMemoryBackplane",
    "Publisher",
    "decode_token",
    "issue_token",
    "kiloclaw_conversation_context",
    "kiloclaw_conversation_presence_context",
    "kiloclaw_instance_context",
    "kiloclaw_instance_presence_context",
    "mint_token",
    "platform_presence_context",
    "presence_context",
]
