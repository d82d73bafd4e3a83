"""Components that render nothing and add browser behaviour to the chat page.

- ``MessageListBehaviour`` keeps the message list's scroll position where the
  reader expects it, requests older and newer pages near either end, and
  marks the list when it is scrolled up (the "jump to newest" button shows
  then). It also installs the keyboard shortcuts.
- ``ScrollToNewest`` scrolls the list to its end whenever
  ``ChatState.scroll_to_newest`` changes, after React has rendered the rows,
  and ``ScrollToUnread`` brings the "new messages" divider into view when
  ``ChatState.scroll_to_unread`` changes.
- ``DocumentTitle`` writes the unread total into the tab title and draws a
  badge on the favicon while it is above zero.

Scroll anchoring: the script keeps the view in place itself, so the
browser's own anchoring is turned off on the list (``overflow-anchor:
none``) and the two never adjust the same change twice. While a page
request is in flight, the script keeps the first visible message and its
offset up to date on every scroll. When a MutationObserver reports a change
of either edge of the window (the page arrived), the script puts that
message back at the same offset, whether rows were added above it or
dropped. One request is in flight at a time, and one without an answer is
dropped after 10 seconds. While the list is at its end and the newest
message is loaded, it stays at the end as new messages arrive.

The scripts trigger Reflex events by clicking hidden buttons (``#load-older``,
``#load-newer``), so every request goes through the normal event queue.
"""

from __future__ import annotations

import reflex as rx

from kilo_web.web.chat_state import ChatState

_MESSAGE_LIST_SCRIPT = """
useEffect(() => {
    if (window.kiloChat) return;
    const EDGE_PX = 300;
    const BOTTOM_PX = 40;
    // A request that got no answer (a failed event) is dropped after this, and
    // the edges are checked again, so a lost request never stops the paging.
    const REQUEST_EXPIRY_MS = 10000;
    const chat = {atBottom: true, pending: null, requested: {}, conversation: null};
    window.kiloChat = chat;
    const list = () => document.getElementById("message-list");
    const edgeOf = (element, which) =>
        which === "older" ? element.dataset.oldestSeq : element.dataset.newestSeq;
    const firstVisible = (element) => {
        const top = element.getBoundingClientRect().top;
        for (const row of element.querySelectorAll(".message")) {
            const box = row.getBoundingClientRect();
            if (box.bottom > top) return {key: row.dataset.key, top: box.top};
        }
        return null;
    };
    const remember = (element) => {
        chat.atBottom = element.scrollHeight - element.scrollTop - element.clientHeight < BOTTOM_PX;
        if (chat.pending) chat.pending.anchor = firstVisible(element);
        const pane = element.parentElement;
        if (pane) pane.dataset.scrolledUp = String(!chat.atBottom || element.dataset.hasNewer === "true");
    };
    const request = (element, which) => {
        // One request per window edge: a new edge value allows the next one.
        const edge = edgeOf(element, which);
        const now = Date.now();
        if (chat.pending && now - chat.pending.at < REQUEST_EXPIRY_MS) return;
        if (chat.requested[which] === edge && !chat.pending) return;
        const button = document.getElementById(`load-${which}`);
        if (!button) return;
        chat.requested[which] = edge;
        chat.pending = {which, edge, at: now, anchor: firstVisible(element),
                        edges: edgeOf(element, "older") + ":" + edgeOf(element, "newer")};
        button.click();
    };
    const loadNearEdges = (element) => {
        if (element.dataset.hasOlder === "true" && element.scrollTop < EDGE_PX) request(element, "older");
        const below = element.scrollHeight - element.scrollTop - element.clientHeight;
        if (element.dataset.hasNewer === "true" && below < EDGE_PX) request(element, "newer");
    };
    chat.scrollToEnd = () => {
        const element = list();
        if (!element) return;
        element.scrollTop = element.scrollHeight;
        remember(element);
    };
    chat.scrollToUnread = () => {
        const element = list();
        const divider = document.getElementById("first-unread");
        if (!element || !divider) return;
        divider.scrollIntoView({block: "center"});
        // Noted at once: a render before the scroll event would otherwise
        // see the list still "at its end" and keep it there.
        remember(element);
    };
    const restore = () => {
        const element = list();
        if (!element) return;
        if (element.dataset.conversation !== chat.conversation) {
            chat.conversation = element.dataset.conversation;
            chat.requested = {};
            chat.pending = null;
            chat.scrollToEnd();
            return;
        }
        const pending = chat.pending;
        const more = pending && (pending.which === "older" ? element.dataset.hasOlder : element.dataset.hasNewer);
        if (pending && edgeOf(element, pending.which) === pending.edge && more !== "true") {
            // Nothing more in that direction: the answer added no rows.
            chat.pending = null;
        } else if (pending && edgeOf(element, "older") + ":" + edgeOf(element, "newer") !== pending.edges) {
            // A page arrived: put the message that was first in view back in its place.
            chat.pending = null;
            const anchor = pending.anchor;
            const row = anchor && element.querySelector(`.message[data-key="${CSS.escape(anchor.key)}"]`);
            if (row) element.scrollTop += row.getBoundingClientRect().top - anchor.top;
        } else if (!pending && chat.atBottom && element.dataset.hasNewer !== "true") {
            element.scrollTop = element.scrollHeight;
        }
        remember(element);
        loadNearEdges(element);
    };
    const onScroll = (event) => {
        const element = event.target;
        if (!(element instanceof HTMLElement) || element.id !== "message-list") return;
        remember(element);
        loadNearEdges(element);
    };
    document.addEventListener("scroll", onScroll, true);
    setInterval(() => {
        if (!chat.pending || Date.now() - chat.pending.at < REQUEST_EXPIRY_MS) return;
        chat.pending = null;
        chat.requested = {};
        const element = list();
        if (element) loadNearEdges(element);
    }, 1000);
    const observer = new MutationObserver((mutations) => {
        const element = list();
        if (element && mutations.some((m) => element.contains(m.target) || m.target.contains(element))) {
            restore();
        }
    });
    observer.observe(document.body, {
        childList: true, subtree: true, attributes: true,
        attributeFilter: ["data-conversation", "data-oldest-seq", "data-newest-seq",
                          "data-has-older", "data-has-newer"],
    });

    const typing = (target) => target instanceof HTMLElement
        && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
    const onKey = (event) => {
        if (event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
            const items = [...document.querySelectorAll(".conversation-item")];
            if (items.length === 0) return;
            const current = items.findIndex((item) => item.dataset.selected === "true");
            const step = event.key === "ArrowUp" ? -1 : 1;
            const next = current < 0 ? 0 : Math.min(items.length - 1, Math.max(0, current + step));
            event.preventDefault();
            if (next !== current) items[next].click();
            return;
        }
        const composerKey = (event.key === "/" && !typing(event.target))
            || ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "k");
        if (composerKey) {
            const composer = document.getElementById("composer");
            if (composer) {
                event.preventDefault();
                composer.focus();
            }
        }
    };
    document.addEventListener("keydown", onKey);
}, []);"""


class MessageListBehaviour(rx.Fragment):
    """Renders nothing; installs the message list's scrolling and the keyboard shortcuts once."""

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect``."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | rx.Var]:
        """Return the effect that installs the listeners."""
        return [_MESSAGE_LIST_SCRIPT]


class ScrollToNewest(rx.Fragment):
    """Renders nothing; scrolls the message list to its end when ``ChatState.scroll_to_newest`` changes."""

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect``."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | rx.Var]:
        """Return the effect that scrolls after each change of the counter."""
        counter = ChatState.scroll_to_newest
        source = f"""
useEffect(() => {{
    if (window.kiloChat) window.kiloChat.scrollToEnd();
}}, [{counter}]);"""
        return [rx.Var(_js_expr=source, _var_data=counter._get_all_var_data())]


class ScrollToUnread(rx.Fragment):
    """Renders nothing; scrolls the "new messages" divider into view when ``ChatState.scroll_to_unread`` changes."""

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect``."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | rx.Var]:
        """Return the effect that scrolls after each change of the counter."""
        counter = ChatState.scroll_to_unread
        source = f"""
useEffect(() => {{
    if ({counter} > 0 && window.kiloChat) window.kiloChat.scrollToUnread();
}}, [{counter}]);"""
        return [rx.Var(_js_expr=source, _var_data=counter._get_all_var_data())]


_TITLE_SCRIPT = """
useEffect(() => {
    const total = __TOTAL__;
    document.title = total > 0 ? `(${total}) kilo_web` : "kilo_web";
    let link = document.querySelector("link[rel~='icon']");
    if (!link) {
        link = document.createElement("link");
        link.rel = "icon";
        document.head.appendChild(link);
    }
    if (!window.__kiloFavicon) window.__kiloFavicon = link.href || "/favicon.ico";
    if (total <= 0) {
        link.href = window.__kiloFavicon;
        link.dataset.badge = "0";
        return;
    }
    // Draw the count on a 64 px icon: a red disc with the number, or "9+".
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 64;
    const context = canvas.getContext("2d");
    context.fillStyle = "#3e63dd";
    context.fillRect(0, 0, 64, 64);
    context.fillStyle = "#e5484d";
    context.beginPath();
    context.arc(44, 20, 20, 0, 2 * Math.PI);
    context.fill();
    context.fillStyle = "#ffffff";
    context.font = "bold 26px sans-serif";
    context.textAlign = "center";
    context.textBaseline = "middle";
    context.fillText(total > 9 ? "9+" : String(total), 44, 21);
    link.href = canvas.toDataURL("image/png");
    link.dataset.badge = String(total);
}, [__TOTAL__]);"""


class DocumentTitle(rx.Fragment):
    """Renders nothing; keeps the tab title as "(unread) kilo_web" and badges the favicon."""

    def add_imports(self) -> dict[str, str]:
        """Import ``useEffect``."""
        return {"react": "useEffect"}

    def add_hooks(self) -> list[str | rx.Var]:
        """Return the effect that writes the title and icon whenever the total changes."""
        total = ChatState.unread_total
        source = _TITLE_SCRIPT.replace("__TOTAL__", str(total))
        return [rx.Var(_js_expr=source, _var_data=total._get_all_var_data())]
