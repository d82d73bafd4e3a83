"""Reflex configuration of kilo_web.

Database URLs come from ``kilo_web.settings`` (``KILO_DATABASE_URL`` or the
SQLite file in ``KILO_DATA_DIR``); see that module for every setting.

Both servers listen on 127.0.0.1 so that a development machine exposes
nothing to its network. To serve other machines, put a reverse proxy in
front, or set ``REFLEX_BACKEND_HOST=0.0.0.0`` (Reflex reads ``REFLEX_*``
variables over this file) and run a production build.
"""

from __future__ import annotations

import reflex as rx
from reflex.plugins import Plugin

from kilo_web.settings import SettingsError, get_settings

# Reflex 0.10.1 writes this script into .web/package.json; the bare --host
# flag makes the Vite dev server listen on every network interface.
_DEV_SCRIPT_ALL_INTERFACES = '"react-router dev --host"'
_DEV_SCRIPT_LOOPBACK = '"react-router dev --host 127.0.0.1"'


class LoopbackDevServerPlugin(Plugin):
    """Make the development frontend server listen on 127.0.0.1 only.

    Reflex renders ``.web/package.json`` before compiling and runs the
    plugins' modify tasks at the end of every compile, before ``reflex run``
    starts the frontend, so the rewritten script is the one that runs.
    Production builds (``reflex export``, ``--env prod``) do not use this script.
    """

    def pre_compile(self, **context) -> None:
        context["add_modify_task"]("package.json", self._pin_dev_host)

    @staticmethod
    def _pin_dev_host(package_json: str) -> str:
        return package_json.replace(_DEV_SCRIPT_ALL_INTERFACES, _DEV_SCRIPT_LOOPBACK)


try:
    _settings = get_settings()
except SettingsError as exc:
    # One line that names the variable, instead of a traceback from deep in Reflex.
    raise SystemExit(f"kilo_web: invalid setting: {exc}") from None

config = rx.Config(
    app_name="kilo_web",
    db_url=_settings.database_url,
    async_db_url=_settings.async_database_url,
    backend_host="127.0.0.1",
    telemetry_enabled=False,
    # The pages use Radix Themes components; naming the plugin replaces the
    # implicit enablement that Reflex 0.10 deprecates with a start-up warning.
    plugins=[rx.plugins.RadixThemesPlugin(), LoopbackDevServerPlugin()],
    # A sitemap helps search engines index public pages, but a chat app's pages
    # sit behind a login. Disabling it also silences its start-up warning.
    disable_plugins=[rx.plugins.SitemapPlugin],
)
