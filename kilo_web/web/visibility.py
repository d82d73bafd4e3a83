"""Page visibility as a state var, for hooks that should hold only while the page is seen.

``page_visibility_tracker()`` adds an effect that reports
``document.visibilityState`` to ``PageVisibilityState`` on mount and on every
``visibilitychange``; pass ``PageVisibilityState.page_visible`` as a hook's
``active`` flag. The module has no chat-specific code.
"""

from __future__ import annotations

from reflex_base.components.component import field
from typing import Any

import reflex as rx
from reflex.event import EventChain, no_args_event_spec
from reflex.vars.base import LiteralVar, Var, VarData
from reflex_components_core.base.fragment import Fragment

_LOCAL_VISIBLE = "__pageVisible"


class PageVisibilityState(rx.State):
    """Whether the tab's page is visible, as the browser last reported it."""

    page_visible: bool = True

    @rx.event
    def set_page_visible(self, visible: bool) -> None:
        """Record the page's visibility."""
        self.page_visible = bool(visible)


class PageVisibilityTracker(Fragment):
    """Renders nothing; reports the page's visibility to ``PageVisibilityState``."""

    # Not named on_*: Reflex treats such props as event triggers of the element.
    change_handler: Any = field(default=None, is_javascript_property=False)
    """An event handler that also gets each change, as ``handler(visible)``."""

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect`` for the listener."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | Var[Any]]:
        """Return the effect that listens for ``visibilitychange``."""
        visible = Var(_LOCAL_VISIBLE).to(bool)
        specs = [PageVisibilityState.set_page_visible(visible)]
        if self.change_handler is not None:
            specs.append(self.change_handler(visible))
        report = LiteralVar.create(EventChain.create(specs, args_spec=no_args_event_spec))
        source = f"""
useEffect(() => {{
    const report = () => {{
        const {_LOCAL_VISIBLE} = document.visibilityState !== "hidden";
        ({report})();
    }};
    report();
    document.addEventListener("visibilitychange", report);
    return () => document.removeEventListener("visibilitychange", report);
}}, []);"""
        return [Var(_js_expr=source, _var_data=VarData.merge(report._get_all_var_data()))]


def page_visibility_tracker(on_change: Any = None) -> PageVisibilityTracker:
    """Return the component that keeps ``PageVisibilityState.page_visible`` current.

    ``on_change``, an event handler taking the new visibility, runs after
    the state is updated, on mount and on each change.
    """
    return PageVisibilityTracker.create(change_handler=on_change)
