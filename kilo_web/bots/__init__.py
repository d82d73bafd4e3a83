"""Bots that use only the public HTTP API and the event-service SDK.

``demo`` is the demo bot that replies to messages in its instance, ``api_client``
its HTTP client, ``replies`` the text of its replies, ``keys`` the operators'
tool for API keys, and ``embedded`` the lifespan task that runs the demo bot
inside the Reflex backend.
"""
