"""Handlers that apply a tab's incoming event-service events to its Reflex states.

States register with ``add_event_handler(event_name, state_cls, handler)``.
For each batch of a tab's events, ``plan_delivery`` groups the events by
state class and handler, so the app shell opens one ``app.modify_state``
per state class and calls each handler once with all of its events.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import reflex as rx

from kilo_web.event_service.protocol import Event

logger = logging.getLogger(__name__)

ALL_EVENTS = "*"
"""Event name that matches every event."""

EventBatchHandler = Callable[[Any, list[Event]], Awaitable[None] | None]
"""Apply a batch of events to a state instance; runs inside ``app.modify_state``."""

DeliveryPlan = dict[type[rx.State], list[tuple[EventBatchHandler, list[Event]]]]
"""For each state class, each handler with its events in arrival order."""

# Event name -> (state full name, handler module and qualified name) -> registration.
_registry: dict[str, dict[tuple[str, str], tuple[type[rx.State], EventBatchHandler]]] = (
    defaultdict(dict)
)


def _registration_key(state_cls: type[rx.State], handler: EventBatchHandler) -> tuple[str, str]:
    name = getattr(handler, "__qualname__", None) or repr(handler)
    return state_cls.get_full_name(), f"{getattr(handler, '__module__', '')}.{name}"


def add_event_handler(
    event_name: str, state_cls: type[rx.State], handler: EventBatchHandler
) -> Callable[[], None]:
    """Apply events named ``event_name`` (``"*"``: every event) to ``state_cls``.

    For each batch of a tab's incoming events, ``handler(state, events)``
    runs once with the tab's instance of ``state_cls`` and the matching
    events in arrival order. It runs inside one ``app.modify_state``, and
    the changed vars reach the browser when the batch is done. Keep it
    short, because the tab's own event handlers wait for the state lock
    meanwhile. It may be a plain function or a coroutine function.

    A handler with the same module, qualified name and state class replaces
    the earlier one, so a module that Reflex imports again (a hot reload)
    leaves no handler bound to its old state classes. Returns a function
    that removes the handler.
    """
    key = _registration_key(state_cls, handler)
    registration = (state_cls, handler)
    _registry[event_name][key] = registration

    def remove() -> None:
        handlers = _registry.get(event_name, {})
        if handlers.get(key) == registration:
            del handlers[key]

    return remove


def plan_delivery(events: Iterable[Event]) -> DeliveryPlan:
    """Group ``events`` by the state class and handler registered for their names."""
    plan: DeliveryPlan = {}
    for event in events:
        matching = [
            *_registry.get(event.event, {}).values(),
            *_registry.get(ALL_EVENTS, {}).values(),
        ]
        for state_cls, handler in matching:
            per_state = plan.setdefault(state_cls, [])
            for known_handler, handler_events in per_state:
                if known_handler is handler:
                    handler_events.append(event)
                    break
            else:
                per_state.append((handler, [event]))
    return plan


async def run_handlers(
    state: rx.State, handlers: list[tuple[EventBatchHandler, list[Event]]], *, tab: str
) -> None:
    """Call each handler with ``state`` and its events; log and skip a handler that raises.

    ``tab`` names the tab in log messages.
    """
    for handler, events in handlers:
        try:
            result = handler(state, events)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # One broken handler must not keep events from the others.
            logger.exception("tab %s: event handler %r failed on %d events", tab, handler, len(events))
