"""The demo bot's replies: command parsing, dice rolls and the Markdown of each reply.

Everything here is pure: the caller passes the clock, the random generator
and, for ``stats``, the numbers it fetched, so tests can pin every reply.
A message is a command when its first word (optionally after ``/`` or ``!``)
is one of COMMANDS; any other message gets the default reply.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

COMMANDS: tuple[tuple[str, str], ...] = (
    ("help", "list these commands"),
    ("roll 2d6", "roll dice: `NdM`, optionally `+K` or `-K`; `roll` alone rolls 1d6"),
    ("time", "the current time in UTC"),
    ("echo text", "repeat the text"),
    ("stats", "numbers about this conversation"),
)
"""Usage and description of each command, in the order ``help`` lists them."""

COMMAND_NAMES = frozenset(usage.split()[0] for usage, _ in COMMANDS)

MAX_DICE = 100
"""Most dice one ``roll`` throws."""

MAX_SIDES = 1000
"""Most sides a die may have."""

MAX_MODIFIER = 10_000
"""Largest absolute value of the ``+K`` or ``-K`` added to a roll."""

MAX_ECHO_CHARS = 2000
"""Maximum number of characters ``echo`` repeats; longer text is cut there."""

PREVIEW_CHARS = 60
"""Maximum number of characters of the sender's message quoted in the default reply."""

_COMMAND = re.compile(r"[/!]?(?P<name>[A-Za-z]+)(?:\s+(?P<argument>.*))?", re.DOTALL)
_DICE = re.compile(r"(?P<count>\d{0,4})[dD](?P<sides>\d{1,5})(?:(?P<sign>[+-])(?P<modifier>\d{1,6}))?")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


class DiceError(ValueError):
    """Raised when a dice expression is malformed or out of bounds."""


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """A parsed message: ``name`` is a command name, or empty for free text."""

    name: str
    argument: str


@dataclasses.dataclass(frozen=True, slots=True)
class Dice:
    """A dice expression such as ``2d6+3``."""

    count: int
    sides: int
    modifier: int = 0

    def __str__(self) -> str:
        modifier = f"{self.modifier:+d}" if self.modifier else ""
        return f"{self.count}d{self.sides}{modifier}"


@dataclasses.dataclass(frozen=True, slots=True)
class ConversationStats:
    """Numbers the bot fetched for ``stats``.

    ``recent_senders`` maps each sender's display name to their number of
    messages among the last ``window`` messages.
    """

    title: str
    message_count: int
    people: int
    bots: int
    recent_senders: Mapping[str, int]
    window: int


def message_text(blocks: Iterable[Mapping[str, Any]]) -> str:
    """Join the text of the text and Markdown blocks of a message, one block per line."""
    texts = [
        block["text"]
        for block in blocks
        if block.get("type") in ("text", "markdown") and isinstance(block.get("text"), str)
    ]
    return "\n".join(texts)


def markdown_block(text: str) -> dict[str, str]:
    """Wrap Markdown in the content block that ``POST .../messages`` accepts."""
    return {"type": "markdown", "text": text}


def parse_command(text: str) -> Command:
    """Split a message into a command name and its argument; free text gets name ``""``."""
    stripped = text.strip()
    match = _COMMAND.fullmatch(stripped)
    if match is not None:
        name = match["name"].lower()
        if name in COMMAND_NAMES:
            return Command(name, (match["argument"] or "").strip())
    return Command("", stripped)


def parse_dice(expression: str) -> Dice:
    """Parse ``NdM``, ``dM``, ``NdM+K`` or ``NdM-K``; an empty expression is ``1d6``.

    Raises DiceError naming the expression and the bound it breaks.
    """
    expression = expression.strip()
    if not expression:
        return Dice(1, 6)
    match = _DICE.fullmatch(expression)
    if match is None:
        raise DiceError(f"{code_span(expression)} is not a dice expression; write it like `2d6` or `3d8+2`")
    count = int(match["count"] or 1)
    sides = int(match["sides"])
    modifier = int(match["modifier"] or 0)
    if match["sign"] == "-":
        modifier = -modifier
    if not 1 <= count <= MAX_DICE:
        raise DiceError(f"cannot roll {count} dice: roll 1 to {MAX_DICE} at a time")
    if not 2 <= sides <= MAX_SIDES:
        raise DiceError(f"a die with {sides} sides does not exist here: use 2 to {MAX_SIDES} sides")
    if abs(modifier) > MAX_MODIFIER:
        raise DiceError(f"the modifier {modifier:+d} is too large: keep it within ±{MAX_MODIFIER}")
    return Dice(count, sides, modifier)


def roll(dice: Dice, rng: random.Random) -> list[int]:
    """Return one result per die, each from 1 to ``dice.sides``."""
    return [rng.randint(1, dice.sides) for _ in range(dice.count)]


def escape_markdown(text: str) -> str:
    """Backslash-escape the characters that Markdown would read as formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def code_span(text: str) -> str:
    """Return ``text`` as a Markdown code span that survives backticks inside it.

    The fence is one backtick longer than the longest run in the text, and a
    space pads text that starts or ends with a backtick (CommonMark 0.31,
    section 6.1).
    """
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def _preview(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    if len(first_line) > PREVIEW_CHARS:
        return first_line[: PREVIEW_CHARS - 1] + "…"
    return first_line


def help_reply(bot_name: str) -> str:
    """Return the Markdown list of commands."""
    lines = [f"### {escape_markdown(bot_name)} commands", ""]
    lines += [f"- `{usage}`: {description}" for usage, description in COMMANDS]
    lines += ["", "Any other message gets a short summary of what you wrote."]
    return "\n".join(lines)


def roll_reply(argument: str, rng: random.Random) -> str:
    """Roll the dice named by ``argument`` and show each die and the total."""
    try:
        dice = parse_dice(argument)
    except DiceError as exc:
        return f"I could not roll that: {exc}."
    results = roll(dice, rng)
    total = sum(results) + dice.modifier
    terms = " + ".join(str(result) for result in results)
    if dice.modifier:
        terms += f" {'+' if dice.modifier > 0 else '-'} {abs(dice.modifier)}"
    if len(results) == 1 and not dice.modifier:
        return f"🎲 **{dice}**: **{total}**"
    return f"🎲 **{dice}**: {terms} = **{total}**"


def time_reply(now: dt.datetime) -> str:
    """Return the time of ``now`` in UTC; ``now`` must be timezone-aware."""
    utc = now.astimezone(dt.UTC)
    return (
        f"It is **{utc:%H:%M:%S} UTC** on {utc:%A, %d %B %Y} "
        f"({code_span(utc.isoformat(timespec='seconds'))})."
    )


def echo_reply(argument: str) -> str:
    """Repeat ``argument``, cut at MAX_ECHO_CHARS characters."""
    if not argument:
        return "Nothing to echo: write `echo` followed by some text."
    if len(argument) > MAX_ECHO_CHARS:
        return argument[:MAX_ECHO_CHARS] + f"\n\n*(cut at {MAX_ECHO_CHARS} characters)*"
    return argument


def stats_reply(stats: ConversationStats) -> str:
    """Return the Markdown summary of a conversation's numbers."""
    people = f"{stats.people} {'person' if stats.people == 1 else 'people'}"
    bots = f"{stats.bots} {'bot' if stats.bots == 1 else 'bots'}"
    lines = [
        f"### Stats for *{escape_markdown(stats.title)}*",
        "",
        f"- **{stats.message_count}** {'message' if stats.message_count == 1 else 'messages'} so far",
        f"- **{stats.people + stats.bots}** members: {people}, {bots}",
    ]
    if stats.recent_senders:
        ranked = sorted(stats.recent_senders.items(), key=lambda item: (-item[1], item[0]))
        senders = ", ".join(f"{escape_markdown(name)} ({count})" for name, count in ranked[:5])
        lines.append(f"- Most active in the last {stats.window} messages: {senders}")
    return "\n".join(lines)


def default_reply(text: str, *, sender_name: str, bot_name: str) -> str:
    """Return the reply to free text: a greeting, a summary of the message and a hint."""
    words = len(text.split())
    lines = [
        f"### Hello, {escape_markdown(sender_name)}",
        "",
        f"You wrote {code_span(_preview(text))}: "
        f"{words} {'word' if words == 1 else 'words'}, {len(text)} characters.",
        "",
        f"I am **{escape_markdown(bot_name)}**, the demo bot of this instance. Try:",
        "",
        "- `help` for every command",
        "- `roll 2d6` to roll two dice",
        "- `stats` for numbers about this conversation",
    ]
    return "\n".join(lines)


def compose_reply(
    command: Command,
    *,
    sender_name: str,
    bot_name: str,
    now: dt.datetime,
    rng: random.Random,
    stats: ConversationStats | None = None,
) -> str:
    """Return the Markdown reply to ``command``.

    ``stats`` is needed only for the ``stats`` command; without it that
    command gets an apology instead of numbers.
    """
    if command.name == "help":
        return help_reply(bot_name)
    if command.name == "roll":
        return roll_reply(command.argument, rng)
    if command.name == "time":
        return time_reply(now)
    if command.name == "echo":
        return echo_reply(command.argument)
    if command.name == "stats":
        if stats is None:
            return "I could not fetch the numbers of this conversation just now; try again later."
        return stats_reply(stats)
    return default_reply(command.argument, sender_name=sender_name, bot_name=bot_name)


def count_senders(messages: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Count messages per sender display name, for ConversationStats.recent_senders."""
    counts: dict[str, int] = {}
    for message in messages:
        name = str(message.get("senderDisplayName") or message.get("senderId"))
        counts[name] = counts.get(name, 0) + 1
    return counts
