"""Browser side of Web Push: the service worker and the subscription flow.

``push_enabler(public_key)`` defines ``window.kiloEnableNotifications()``,
which the "Enable notifications" button runs. It requests permission,
registers ``/kilo-sw.js`` (``assets/kilo-sw.js``), subscribes to push with
the server's VAPID public key and registers the subscription with
``POST /api/devices`` under the user's session token. Without a push
service (or without a key) the browser still shows in-page notifications
while the tab is hidden.
"""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex_base.components.component import field
from reflex_base.vars import VarData
from reflex_base.vars.base import Var
from reflex_components_core.base.fragment import Fragment
from reflex_local_auth.local_auth import AUTH_TOKEN_LOCAL_STORAGE_KEY

SERVICE_WORKER_URL = "/kilo-sw.js"


class PushEnabler(Fragment):
    """Renders nothing; defines the page's ``kiloEnableNotifications`` function."""

    public_key: Any = field(default=None, is_javascript_property=False)

    def add_imports(self) -> dict[str, Any]:
        """Import ``useEffect`` and the backend URLs of ``env.json``."""
        return {"react": "useEffect", "$/env.json": rx.ImportVar(tag="env", is_default=True)}

    def add_hooks(self) -> list[str | Var]:
        """Return the effect that (re)defines the function when the key changes."""
        key = self.public_key
        source = f"""
useEffect(() => {{
    window.kiloEnableNotifications = async () => {{
        if (typeof Notification === "undefined") return "unsupported";
        if (Notification.permission === "default") await Notification.requestPermission();
        if (Notification.permission !== "granted") return "denied";
        if (!("serviceWorker" in navigator)) return "in-page only";
        const registration = await navigator.serviceWorker.register("{SERVICE_WORKER_URL}");
        const publicKey = {key};
        if (!publicKey || !("PushManager" in window)) return "in-page only";
        try {{
            const subscription = await registration.pushManager.subscribe(
                {{userVisibleOnly: true, applicationServerKey: publicKey}});
            const response = await fetch(new URL("/api/devices", env.PING).href, {{
                method: "POST",
                headers: {{
                    "Content-Type": "application/json",
                    "Authorization": `Bearer ${{localStorage.getItem("{AUTH_TOKEN_LOCAL_STORAGE_KEY}")}}`,
                }},
                body: JSON.stringify({{kind: "webpush", ...subscription.toJSON()}}),
            }});
            return response.ok ? "subscribed" : `registration failed: HTTP ${{response.status}}`;
        }} catch (error) {{
            console.warn("kilo_web: push subscription failed", error);
            return "in-page only";
        }}
    }};
}}, [{key}]);"""
        var_data = key._get_all_var_data() if isinstance(key, Var) else None
        return [Var(_js_expr=source, _var_data=VarData.merge(var_data))]


def push_enabler(public_key: Var[str] | str) -> PushEnabler:
    """Return the component that defines ``window.kiloEnableNotifications``."""
    key = public_key if isinstance(public_key, Var) else Var.create(public_key)
    return PushEnabler.create(public_key=key)
