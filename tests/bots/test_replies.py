"""The demo bot's replies, without any server: parsing, dice, Markdown."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from kilo_web.bots import replies
from kilo_web.bots.replies import Command, ConversationStats, Dice, DiceError

NOW = dt.datetime(2026, 12, 4, 21, 5, 9, tzinfo=dt.UTC)


def compose(text: str, *, seed: int = 1, stats: ConversationStats | None = None) -> str:
    return replies.compose_reply(replies.parse_command(text), sender_name="Alice",
                                 bot_name="Kilo Bot", now=NOW, rng=random.Random(seed), stats=stats)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("help", Command("help", "")),
        ("  HELP  ", Command("help", "")),
        ("/help", Command("help", "")),
        ("!roll 3d8+2", Command("roll", "3d8+2")),
        ("roll", Command("roll", "")),
        ("echo  two\nlines ", Command("echo", "two\nlines")),
        ("Time", Command("time", "")),
        ("stats please", Command("stats", "please")),
        ("hello there", Command("", "hello there")),
        ("helpful?", Command("", "helpful?")),
        ("  ", Command("", "")),
        ("42", Command("", "42")),
    ],
    ids=["help", "case-and-space", "slash", "bang-with-argument", "no-argument", "multiline",
         "capitalised", "stats-argument", "free-text", "prefix-of-command", "blank", "digits"],
)
def test_parse_command(text, expected):
    assert replies.parse_command(text) == expected


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("", Dice(1, 6)),
        ("d20", Dice(1, 20)),
        ("2d6", Dice(2, 6)),
        ("3D8+2", Dice(3, 8, 2)),
        ("1d4-1", Dice(1, 4, -1)),
        (" 100d1000 ", Dice(100, 1000)),
    ],
)
def test_parse_dice_accepts(expression, expected):
    assert replies.parse_dice(expression) == expected


@pytest.mark.parametrize(
    "expression, fragment",
    [
        ("0d6", "1 to 100"),
        ("101d6", "1 to 100"),
        ("2d1", "2 to 1000"),
        ("2d1001", "2 to 1000"),
        ("1d6+10001", "within ±10000"),
        ("two dice", "not a dice expression"),
        ("2d", "not a dice expression"),
        ("2d6*3", "not a dice expression"),
    ],
)
def test_parse_dice_rejects(expression, fragment):
    with pytest.raises(DiceError) as rejected:
        replies.parse_dice(expression)
    assert fragment in str(rejected.value)


@pytest.mark.parametrize("dice", [Dice(1, 2), Dice(3, 6), Dice(100, 20), Dice(5, 1000)])
def test_roll_stays_in_bounds(dice):
    rng = random.Random(7)
    for _ in range(200):
        results = replies.roll(dice, rng)
        assert len(results) == dice.count
        assert min(results) >= 1
        assert max(results) <= dice.sides


def test_roll_reaches_both_faces():
    rng = random.Random(3)
    seen = {result for _ in range(200) for result in replies.roll(Dice(1, 6), rng)}
    assert seen == {1, 2, 3, 4, 5, 6}


def test_roll_reply_shows_dice_and_total():
    rng = random.Random(11)
    expected = replies.roll(Dice(2, 6), random.Random(11))
    text = replies.roll_reply("2d6+3", rng)
    assert text.startswith("🎲 **2d6+3**: ")
    assert f"{expected[0]} + {expected[1]} + 3" in text
    assert text.endswith(f"**{sum(expected) + 3}**")


def test_roll_reply_negative_modifier():
    text = replies.roll_reply("1d4-1", random.Random(5))
    result = replies.roll(Dice(1, 4), random.Random(5))[0]
    assert text == f"🎲 **1d4-1**: {result} - 1 = **{result - 1}**"


def test_roll_reply_single_die():
    result = replies.roll(Dice(1, 6), random.Random(2))[0]
    assert compose("roll", seed=2) == f"🎲 **1d6**: **{result}**"


def test_roll_reply_explains_bad_dice():
    text = compose("roll 500d6")
    assert text.startswith("I could not roll that: ")
    assert "1 to 100" in text


def test_help_lists_every_command():
    text = compose("help")
    assert text.startswith("### Kilo Bot commands\n")
    for usage, _ in replies.COMMANDS:
        assert f"- `{usage}`:" in text


def test_time_reply_in_utc():
    berlin = dt.timezone(dt.timedelta(hours=1))
    text = replies.time_reply(NOW.astimezone(berlin))
    assert text == "It is **21:05:09 UTC** on Friday, 04 December 2026 (`2026-12-04T21:05:09+00:00`)."


def test_echo_repeats_and_cuts():
    assert compose("echo **bold** text") == "**bold** text"
    assert compose("echo").startswith("Nothing to echo")
    long = compose("echo " + "x" * (replies.MAX_ECHO_CHARS + 10))
    assert long.startswith("x" * replies.MAX_ECHO_CHARS + "\n\n")
    assert f"cut at {replies.MAX_ECHO_CHARS} characters" in long


def test_stats_reply_lists_numbers():
    stats = ConversationStats(title="Team [beta]", message_count=42, people=2, bots=1,
                              recent_senders={"Bob": 3, "Alice": 5, "Kilo Bot": 3}, window=11)
    text = compose("stats", stats=stats)
    assert text.splitlines() == [
        r"### Stats for *Team \[beta\]*",
        "",
        "- **42** messages so far",
        "- **3** members: 2 people, 1 bot",
        "- Most active in the last 11 messages: Alice (5), Bob (3), Kilo Bot (3)",
    ]


def test_stats_reply_without_numbers():
    assert "could not fetch" in compose("stats")


def test_default_reply_is_markdown_summary():
    text = compose("Is the `build` green?")
    lines = text.splitlines()
    assert lines[0] == "### Hello, Alice"
    assert lines[2] == "You wrote ``Is the `build` green?``: 4 words, 21 characters."
    assert "- `help` for every command" in lines


def test_default_reply_cuts_long_preview():
    text = compose("a" * 200 + "\nsecond line")
    preview = "a" * (replies.PREVIEW_CHARS - 1) + "…"
    assert f"`{preview}`" in text
    assert "second line" not in text


@pytest.mark.parametrize(
    "text, expected",
    [("plain", "`plain`"), ("a`b", "``a`b``"), ("`edge`", "`` `edge` ``"), ("x``y", "```x``y```")],
)
def test_code_span_survives_backticks(text, expected):
    assert replies.code_span(text) == expected


def test_escape_markdown():
    assert replies.escape_markdown("*Ann* [admin] #1") == r"\*Ann\* \[admin\] \#1"


def test_message_text_joins_text_and_markdown_blocks():
    blocks = [{"type": "text", "text": "one"}, {"type": "image", "url": "x"},
              {"type": "markdown", "text": "**two**"}, {"type": "text"}]
    assert replies.message_text(blocks) == "one\n**two**"


def test_markdown_block():
    assert replies.markdown_block("# hi") == {"type": "markdown", "text": "# hi"}


def test_count_senders():
    messages = [{"senderDisplayName": "Alice"}, {"senderDisplayName": "Bob"},
                {"senderDisplayName": "Alice"}, {"senderId": 9}]
    assert replies.count_senders(messages) == {"Alice": 2, "Bob": 1, "9": 1}
