"""Hook components that hold a backend subscription while mounted and active.

``use_subscription(context, active, state=...)`` renders nothing and adds one
React ``useEffect`` whose dependency list is ``[context, active, epoch]``.
Its setup sends ``subscribe_context(context, epoch)`` to a backend state
when ``context`` is not empty and ``active`` is true. Its cleanup sends
``unsubscribe_context`` with the same context and epoch. React runs the
cleanup of the old values before the setup of the new ones, so a change of
``context`` or ``active`` moves the subscription.

The backend half is ``SubscriptionState``, a state mixin. It counts the
requests of each tab in a ``SubscriptionLedger`` and calls a pluggable
``SubscriptionSink`` only when a context goes 0 -> 1 or 1 -> 0. What a
context means is up to the sink, so this module has no chat code. An app defines one concrete
state::

    class MySubscriptions(SubscriptionState, rx.State):
        subscription_sink: ClassVar[SubscriptionSink] = MySink()

and adds ``SubscriptionEpochMiddleware(MySubscriptions)`` to its ``rx.App``.

Facts about Reflex 0.10.1 and React 19 that shape this design, checked in
Chromium:

- ``on_mount``/``on_unmount`` compile to ``useEffect(..., [])``, which never
  re-runs when a prop changes, so the hook writes its own effect.
- Dev mode renders under React StrictMode, which mounts, cleans up and
  mounts again: the backend sees subscribe, unsubscribe, subscribe and the
  count nets to 1.
- Effects are not re-run after a socket reconnect or a backend restart, and
  cleanups do not run when a tab closes or reloads. The middleware issues a
  new ``subscription_epoch`` on every hydrate and forgets the tab's counts,
  so every mounted component re-subscribes for the new epoch; requests for
  any other epoch are ignored. The sink is told about the reset, so it can
  release what the tab held before (``SubscriptionSink.reset``).
- Reflex moves the hooks of a component to the nearest enclosing React
  function component: the page, or an ``@rx.memo`` component. Inside
  ``rx.cond`` the effect therefore runs whether or not the branch is shown,
  so pass the condition as ``active`` instead. Inside ``rx.foreach`` the
  effect ends up outside the loop, referring to an undefined loop variable,
  so wrap the item in ``@rx.memo`` and pass the context as a prop::

      @rx.memo
      def item_subscription(context: rx.Var[str]) -> rx.Component:
          return use_subscription(context, state=MySubscriptions)

      rx.foreach(MyState.contexts, lambda c: item_subscription(context=c))
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import reflex as rx
from reflex.middleware import Middleware
from reflex.state import State
from reflex_base.components.component import field
from reflex_base.constants.state import FIELD_MARKER
from reflex_base.event import EventChain, no_args_event_spec
from reflex_base.utils.format import format_event_handler
from reflex_base.vars import VarData
from reflex_base.vars.base import LiteralVar, Var
from reflex_components_core.base.fragment import Fragment

from kilo_web.web.subscription_ledger import (
    DEFAULT_MAX_CONTEXTS,
    Change,
    EpochClock,
    SubscriptionLedger,
)

if TYPE_CHECKING:
    from reflex.app import App
    from reflex.state import BaseState, StateUpdate
    from reflex_base.event import Event

logger = logging.getLogger(__name__)

epoch_clock = EpochClock()
"""Clock that issues the subscription epochs of this backend process."""


class SubscriptionSink(Protocol):
    """Receive the 0 -> 1 and 1 -> 0 transitions of one tab's contexts.

    The methods run inside the tab's event handlers, which Reflex runs one at
    a time per tab under the tab's state lock, so they must not wait on the
    network: queue the work and return.
    """

    def validate_context(self, context: str) -> str:
        """Return ``context`` if the sink can hold it; raise ValueError otherwise."""
        ...

    async def subscribe(self, state: SubscriptionState, context: str) -> None:
        """Start holding ``context`` for the tab that owns ``state``."""
        ...

    async def unsubscribe(self, state: SubscriptionState, context: str) -> None:
        """Stop holding ``context`` for the tab that owns ``state``."""
        ...

    async def reset(self, state: SubscriptionState, held: list[str]) -> None:
        """Handle a new epoch: ``held`` lists the contexts counted before it.

        The tab's mounted components subscribe again right after this call,
        each with a fresh ``subscribe``. A sink may release ``held`` at once,
        or keep it for a short while so that a context claimed again is
        never dropped in between.
        """
        ...


class SubscriptionState(rx.State, mixin=True):
    """Backend half of ``use_subscription``: per-tab counts and the epoch.

    Subclass it together with ``rx.State`` and set ``subscription_sink``.
    Only plain values live in the state (it is pickled by the disk and Redis
    state managers); the sink keeps any sockets or tasks elsewhere.
    """

    subscription_sink: ClassVar[SubscriptionSink | None] = None
    max_subscriptions_per_tab: ClassVar[int] = DEFAULT_MAX_CONTEXTS

    subscription_epoch: int = 0
    """Epoch of the tab's current hydration; 0 until the first hydrate."""

    _subscription_counts: dict[str, int] = {}

    def _get_subscription_sink(self) -> SubscriptionSink:
        sink = type(self).subscription_sink
        if sink is None:
            raise RuntimeError(
                f"{type(self).__name__}.subscription_sink is not set; "
                "assign a SubscriptionSink to it in the state class"
            )
        return sink

    def _ledger(self) -> SubscriptionLedger:
        return SubscriptionLedger(
            self.subscription_epoch,
            self._subscription_counts,
            max_contexts=type(self).max_subscriptions_per_tab,
        )

    def _store(self, ledger: SubscriptionLedger) -> None:
        # Assign a new dict, so the state marks the backend var as changed.
        self._subscription_counts = ledger.counts
        if self.subscription_epoch != ledger.epoch:
            self.subscription_epoch = ledger.epoch

    @property
    def subscription_counts(self) -> dict[str, int]:
        """A copy of the tab's counts for the current epoch."""
        return dict(self._subscription_counts)

    @rx.event
    async def subscribe_context(self, context: str, epoch: int) -> None:
        """Count one more holder of ``context``; subscribe it on 0 -> 1."""
        sink = self._get_subscription_sink()
        try:
            context = sink.validate_context(context)
        except ValueError as exc:
            logger.warning("rejected subscription request: %s", exc)
            return
        ledger = self._ledger()
        change = ledger.acquire(context, epoch)
        if change is Change.LIMIT_REACHED:
            logger.warning(
                "rejected subscription to %s: the tab has reached the maximum of %d contexts",
                context,
                ledger.max_contexts,
            )
            return
        if change is Change.STALE_EPOCH:
            logger.debug("ignored subscribe to %s for stale epoch %s", context, epoch)
            return
        self._store(ledger)
        if change is Change.STARTED:
            await sink.subscribe(self, context)

    @rx.event
    async def unsubscribe_context(self, context: str, epoch: int) -> None:
        """Count one holder less of ``context``; unsubscribe it on 1 -> 0."""
        ledger = self._ledger()
        change = ledger.release(context, epoch)
        if change in (Change.STALE_EPOCH, Change.NOT_HELD):
            logger.debug("ignored unsubscribe from %s (%s, epoch %s)", context, change.value, epoch)
            return
        self._store(ledger)
        if change is Change.STOPPED:
            await self._get_subscription_sink().unsubscribe(self, context)

    @rx.event
    async def resubscribe(self) -> None:
        """Start a new epoch, so every mounted hook component subscribes again.

        Chain it after anything that changes what the sink subscribes with,
        such as a sign-in or a sign-out.
        """
        await self._start_new_epoch()

    async def _start_new_epoch(self) -> None:
        ledger = self._ledger()
        held = ledger.reset(epoch_clock.next_epoch(previous=ledger.epoch))
        self._store(ledger)
        await self._get_subscription_sink().reset(self, held)


class SubscriptionEpochMiddleware(Middleware):
    """Start a new subscription epoch whenever a tab hydrates.

    The frontend sends ``hydrate_and_load`` once per socket connection: on a
    page load, on a reconnect, and after a backend restart. Add the
    middleware with ``app.add_middleware(SubscriptionEpochMiddleware(cls))``.
    """

    def __init__(self, state_cls: type[SubscriptionState]) -> None:
        self.state_cls = state_cls
        self._hydrate_event_names: frozenset[str] | None = None

    def _is_hydrate(self, event_name: str) -> bool:
        if self._hydrate_event_names is None:
            self._hydrate_event_names = frozenset(
                format_event_handler(State.event_handlers[name])
                for name in ("hydrate", "hydrate_and_load")
            )
        return event_name in self._hydrate_event_names

    async def preprocess(self, app: App, state: BaseState, event: Event) -> StateUpdate | None:
        """Reset the tab's counts and issue a new epoch before a hydrate event runs.

        Returns None so the hydrate handler runs next and sends the new
        epoch to the frontend with the rest of the state.
        """
        if not self._is_hydrate(event.name):
            return None
        subscriptions = await state.get_state(self.state_cls)
        await subscriptions._start_new_epoch()
        return None


class SubscriptionHook(Fragment):
    """Component that holds a subscription while mounted and active; it renders an empty fragment.

    Build it with ``use_subscription``.
    """

    hooks: list[Any] = field(default_factory=list, is_javascript_property=False)

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect`` for the hook."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | Var]:
        """Return the effect built by ``use_subscription``."""
        return list(self.hooks)


# Names local to the effect's closure. Unusual names, because a memo prop
# named like them would otherwise be shadowed in its own initializer.
_LOCAL_CONTEXT = "__subscriptionContext"
_LOCAL_EPOCH = "__subscriptionEpoch"


def _event_function(handler: Any) -> Var:
    """Render ``handler(context, epoch)`` as a JS function that queues the event."""
    spec = handler(Var(_LOCAL_CONTEXT).to(str), Var(_LOCAL_EPOCH).to(int))
    return LiteralVar.create(EventChain.create(spec, args_spec=no_args_event_spec))


def subscription_effect(
    context: Var, active: Var, *, state: type[SubscriptionState]
) -> Var:
    """Build the ``useEffect`` source that subscribes ``context`` while ``active`` is true.

    The effect skips epoch 0, the value compiled into the page before the
    first hydrate, because the backend starts a new epoch on hydrate anyway.
    """
    epoch = state.subscription_epoch  # type: ignore[attr-defined]  # a Var on the class
    subscribe = _event_function(state.subscribe_context)
    unsubscribe = _event_function(state.unsubscribe_context)
    source = f"""
useEffect(() => {{
    const {_LOCAL_CONTEXT} = {context};
    const {_LOCAL_EPOCH} = {epoch};
    if (!({active}) || !{_LOCAL_CONTEXT} || !{_LOCAL_EPOCH}) {{
        return undefined;
    }}
    ({subscribe})();
    return () => {{
        ({unsubscribe})();
    }};
}}, [{context}, {active}, {epoch}]);"""
    var_data = VarData.merge(
        context._get_all_var_data(),
        active._get_all_var_data(),
        epoch._get_all_var_data(),
        subscribe._get_all_var_data(),
        unsubscribe._get_all_var_data(),
    )
    return Var(_js_expr=source, _var_data=var_data)


# rx.foreach names its loop variable `<parameter name>_rx_state_`; a state var
# renders as `<state>.<name>_rx_state_` and carries var data, a loop variable none.
_LOOP_VARIABLE = re.compile(r"[A-Za-z_$][\w$]*" + re.escape(FIELD_MARKER))


def _reject_loop_variable(name: str, var: Var) -> None:
    if var._get_all_var_data() is None and _LOOP_VARIABLE.fullmatch(str(var)):
        raise ValueError(
            f"{name}={var!s} looks like an rx.foreach loop variable; the hook's effect would be "
            "moved out of the loop and fail in the browser. Wrap the item in an @rx.memo "
            "component and pass the value as a prop (see kilo_web.web.hooks)."
        )


def use_subscription(
    context: Var[str] | str | None,
    active: Var[bool] | bool = True,
    *,
    state: type[SubscriptionState],
) -> SubscriptionHook:
    """Return a component that holds ``context`` while it is mounted and ``active`` is true.

    ``context`` and ``active`` may be state vars, memo props or literals; an
    empty or None context holds nothing. ``state`` is the app's concrete
    subclass of ``SubscriptionState``. Inside ``rx.cond``, pass the condition
    as ``active``; inside ``rx.foreach``, wrap the call in an ``@rx.memo``
    component (see the module docstring).
    """
    if not isinstance(state, type) or not issubclass(state, SubscriptionState):
        raise TypeError(
            f"state must be a subclass of SubscriptionState, got {state!r}"
        )
    context_var = context if isinstance(context, Var) else LiteralVar.create(context)
    active_var = active if isinstance(active, Var) else LiteralVar.create(bool(active))
    _reject_loop_variable("context", context_var)
    _reject_loop_variable("active", active_var)
    effect = subscription_effect(context_var, active_var, state=state)
    return SubscriptionHook.create(hooks=[effect])
