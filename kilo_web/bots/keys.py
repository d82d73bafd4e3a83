"""API key files and the operators' tool for bot keys.

::

    python -m kilo_web.bots.keys create kilobot      # writes the demo bot's key file
    python -m kilo_web.bots.keys create mybot --print --label laptop
    python -m kilo_web.bots.keys list kilobot
    python -m kilo_web.bots.keys revoke kilobot 0123456789abcdef

The tool works on the database named by the settings, as an operator: it
needs no instance owner. A key is shown once, so ``create`` writes it to a
file with mode 0600 (by default KILO_BOT_API_KEY_FILE) or prints it with
``--print``. The key is never logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from pathlib import Path

from sqlmodel import Session, select

from kilo_web.chat import bots, service
from kilo_web.chat.database import make_engine
from kilo_web.chat.errors import ChatError
from kilo_web.chat.models import ApiKey, InstanceMember, UserProfile
from kilo_web.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class KeyFileError(Exception):
    """Raised when a key file cannot be read or written."""


def read_api_key(path: Path) -> str | None:
    """Return the API key stored in ``path``, or None when the file does not exist.

    Logs a warning when other users may read the file. Raises KeyFileError
    for an empty or unreadable file.
    """
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read the API key file {path}: {exc}") from exc
    key = text.strip()
    if not key:
        raise KeyFileError(f"the API key file {path} is empty; create a key with "
                           "'python -m kilo_web.bots.keys create BOT'")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("the API key file %s is readable by other users; run 'chmod 600 %s'",
                       path, path)
    return key


def _reject_existing_file(path: Path, replace: bool) -> None:
    if path.exists() and not replace:
        raise KeyFileError(f"the API key file {path} already exists; pass --force to replace it "
                           "(the key in it stays valid until you revoke it)")


def write_api_key(path: Path, key: str, *, replace: bool = False) -> None:
    """Write ``key`` to ``path`` with mode 0600, creating its folder.

    The key goes to a temporary file first, which then replaces ``path``, so
    a reader never sees half a key. Raises KeyFileError when ``path``
    exists and ``replace`` is false.
    """
    _reject_existing_file(path, replace)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def find_bot_profile(session: Session, name: str) -> UserProfile:
    """Return the bot account named by username or user id; raise ChatError."""
    profile = service.find_user_by_username(session, name)
    if profile is None and name.isdigit():
        profile = session.get(UserProfile, int(name))
    if profile is None:
        raise ChatError(f"no account is named {name!r}; give a bot's username or user id")
    if not profile.is_bot:
        raise ChatError(f"{name!r} is a person's account, not a bot")
    return profile


def ensure_bot_instance(session: Session, profile: UserProfile, instance_id: str | None) -> str:
    """Return the instance of the bot, attaching it first when it belongs to none.

    Without ``instance_id``, a bot that belongs to no instance is attached to
    the one instance it is a member of (the case of bots created before bot
    rows existed). Raises ChatError when that is ambiguous.
    """
    assert profile.id is not None
    existing = bots.bot_of(session, profile.id)
    if existing is not None:
        if instance_id is not None and instance_id != existing.instance_id:
            raise ChatError(f"bot {profile.id} belongs to instance {existing.instance_id!r}, "
                            f"not {instance_id!r}")
        return existing.instance_id
    if instance_id is None:
        memberships = session.exec(
            select(InstanceMember.instance_id).where(InstanceMember.user_id == profile.id)
        ).all()
        if len(memberships) != 1:
            raise ChatError(f"bot {profile.id} belongs to no instance and is a member of "
                            f"{len(memberships)}; pass --instance ID")
        instance_id = memberships[0]
    bots.attach_bot(session, bot_id=profile.id, instance_id=instance_id)
    return instance_id


def create_key_file(
    session: Session, *, bot_name: str, path: Path, label: str = "", instance_id: str | None = None,
    replace: bool = False,
) -> bots.ApiKeyView:
    """Make a key for the bot ``bot_name`` and write it to ``path``; return the key's view.

    The file is checked before the key is made, so a refused write leaves
    no unused key behind. Raises ChatError or KeyFileError.
    """
    _reject_existing_file(path, replace)
    profile = find_bot_profile(session, bot_name)
    ensure_bot_instance(session, profile, instance_id)
    assert profile.id is not None
    view, key = bots.create_api_key(session, bot_id=profile.id, created_by=None, label=label)
    write_api_key(path, key, replace=replace)
    logger.info("wrote API key %s of bot %s to %s", view.id, profile.id, path)
    return view


# Command line -----------------------------------------------------------------


def _create(session: Session, args: argparse.Namespace, settings: Settings) -> int:
    if args.print:
        profile = find_bot_profile(session, args.bot)
        ensure_bot_instance(session, profile, args.instance)
        assert profile.id is not None
        view, key = bots.create_api_key(session, bot_id=profile.id, created_by=None,
                                        label=args.label)
        print(f"API key {view.id} of bot {args.bot} (shown once, store it now):")
        print(key)
        return 0
    path = args.key_file or settings.bot_api_key_path
    view = create_key_file(session, bot_name=args.bot, path=path, label=args.label,
                           instance_id=args.instance, replace=args.force)
    print(f"created API key {view.id} of bot {args.bot} in {path}")
    return 0


def _list(session: Session, args: argparse.Namespace, settings: Settings) -> int:
    profile = find_bot_profile(session, args.bot)
    rows = session.exec(
        select(ApiKey).where(ApiKey.bot_id == profile.id).order_by(ApiKey.created_at, ApiKey.id)
    ).all()
    if not rows:
        print(f"bot {args.bot} has no API keys")
    for row in rows:
        view = bots.ApiKeyView.of(row)
        state = f"revoked {view.revoked_at:%Y-%m-%d %H:%M}" if view.revoked_at else "active"
        used = f"{view.last_used_at:%Y-%m-%d %H:%M}" if view.last_used_at else "never"
        print(f"{view.id}  {state:<24}  created {view.created_at:%Y-%m-%d %H:%M}  "
              f"last used {used}  {view.label}")
    return 0


def _revoke(session: Session, args: argparse.Namespace, settings: Settings) -> int:
    profile = find_bot_profile(session, args.bot)
    assert profile.id is not None
    view, version = bots.revoke_api_key(session, bot_id=profile.id, key_id=args.key_id,
                                        user_id=None)
    print(f"revoked API key {view.id} of bot {args.bot}; its token version is now {version}")
    # NOTE: this process cannot reach the backend's in-memory backplane, so
    # open event-service sockets of the bot stay up until their token expires.
    print("HTTP calls with the key fail from now on; open event-service connections of the bot "
          f"close when their token expires (at most {settings.token_ttl_seconds} s)")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kilo_web.bots.keys",
                                     description="Create, list and revoke bots' API keys.")
    commands = parser.add_subparsers(dest="command", required=True)

    create = commands.add_parser("create", help="make a new key and write it to a file")
    create.add_argument("bot", help="the bot's username or user id")
    create.add_argument("--label", default="", help="a note on where the key is used, such as a host name")
    create.add_argument("--instance", default=None,
                        help="instance to attach a bot that belongs to none")
    create.add_argument("--key-file", type=Path, default=None,
                        help="file to write the key to, mode 0600 (default: KILO_BOT_API_KEY_FILE)")
    create.add_argument("--force", action="store_true", help="replace an existing key file")
    create.add_argument("--print", action="store_true",
                        help="print the key instead of writing a file")
    create.set_defaults(handler=_create)

    listing = commands.add_parser("list", help="list a bot's keys, revoked ones included")
    listing.add_argument("bot", help="the bot's username or user id")
    listing.set_defaults(handler=_list)

    revoke = commands.add_parser("revoke", help="revoke one key of a bot")
    revoke.add_argument("bot", help="the bot's username or user id")
    revoke.add_argument("key_id", help="the key's id: the 16 hex digits after kilo_bot_")
    revoke.set_defaults(handler=_revoke)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the key tool on the configured database; return the process exit status."""
    settings = get_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            return args.handler(session, args, settings)
    except (ChatError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
