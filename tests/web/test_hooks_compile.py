"""The JavaScript that ``use_subscription`` compiles to."""

from __future__ import annotations

import re
from typing import ClassVar

import pytest
import reflex as rx
from reflex.compiler.compiler import compile_memo_components, compile_page
from reflex_base.components.memo import MEMOS

from kilo_web.web.hooks import SubscriptionState, use_subscription


class _NoSink:
    """A sink is never called while compiling."""

    def validate_context(self, context: str) -> str:
        return context

    async def subscribe(self, state: SubscriptionState, context: str) -> None:
        raise AssertionError("not called at compile time")

    async def unsubscribe(self, state: SubscriptionState, context: str) -> None:
        raise AssertionError("not called at compile time")

    async def reset(self, state: SubscriptionState, held: list[str]) -> None:
        raise AssertionError("not called at compile time")


class CompileTestSubscriptions(SubscriptionState, rx.State):
    subscription_sink: ClassVar[_NoSink] = _NoSink()


class CompileTestPage(rx.State):
    context: str = "/a"
    active: bool = True
    contexts: list[str] = ["/x", "/y"]


@rx.memo
def compile_test_item(context: rx.Var[str]) -> rx.Component:
    return use_subscription(context, state=CompileTestSubscriptions)


_EFFECT = re.compile(r"useEffect\(\(\) => \{(?P<body>.*?)\n\}, \[(?P<deps>[^\]]*)\]\);", re.DOTALL)


def _effects(code: str) -> list[tuple[str, list[str]]]:
    """Return the body and dependency list of each subscription effect in ``code``."""
    return [
        (match["body"], [dep.strip() for dep in match["deps"].split(",")])
        for match in _EFFECT.finditer(code)
        if "subscribe_context" in match["body"]
    ]


def test_effect_depends_on_context_active_and_epoch() -> None:
    page = rx.box(
        use_subscription(CompileTestPage.context, CompileTestPage.active, state=CompileTestSubscriptions)
    )

    _, code = compile_page("/", page)

    effects = _effects(code)
    assert len(effects) == 1
    _, deps = effects[0]
    assert deps == [
        str(CompileTestPage.context),
        str(CompileTestPage.active),
        str(CompileTestSubscriptions.subscription_epoch),
    ]


def test_effect_sends_subscribe_and_unsubscribe_events() -> None:
    page = rx.box(use_subscription(CompileTestPage.context, state=CompileTestSubscriptions))

    _, code = compile_page("/", page)

    body, _ = _effects(code)[0]
    setup, _, cleanup = body.partition("return () =>")
    full_name = CompileTestSubscriptions.get_full_name()
    assert f'"{full_name}.subscribe_context"' in setup
    assert f'"{full_name}.unsubscribe_context"' in cleanup
    # Setup and cleanup send the values the effect captured when it ran.
    assert setup.count("__subscriptionContext") >= 2
    assert "__subscriptionContext" in cleanup
    assert "__subscriptionEpoch" in cleanup


def test_effect_skips_empty_context_inactive_and_epoch_zero() -> None:
    page = rx.box(use_subscription(CompileTestPage.context, CompileTestPage.active, state=CompileTestSubscriptions))

    _, code = compile_page("/", page)

    body, _ = _effects(code)[0]
    guard = body.split("\n")[3]
    assert guard.strip().startswith("if (!(")
    assert str(CompileTestPage.active) in guard
    assert "!__subscriptionContext" in guard
    assert "!__subscriptionEpoch" in guard


def test_literal_context_and_default_active() -> None:
    page = rx.box(use_subscription("/presence/platform", state=CompileTestSubscriptions))

    _, code = compile_page("/", page)

    _, deps = _effects(code)[0]
    assert deps == ['"/presence/platform"', "true", str(CompileTestSubscriptions.subscription_epoch)]


def test_memo_item_effect_uses_its_prop() -> None:
    page = rx.box(rx.foreach(CompileTestPage.contexts, lambda item: compile_test_item(context=item)))
    _, page_code = compile_page("/", page)

    memo_files, _ = compile_memo_components(MEMOS.values())

    memo_code = next(code for _, code in memo_files if "export const CompileTestItem" in code)
    effects = _effects(memo_code)
    assert len(effects) == 1
    context_prop, active, epoch = effects[0][1]
    assert context_prop.startswith("context")
    assert active == "true"
    assert epoch == str(CompileTestSubscriptions.subscription_epoch)
    # The page renders one memo component per item and has no effect of its own.
    assert "CompileTestItem" in page_code
    assert _effects(page_code) == []


def test_foreach_loop_variable_is_rejected() -> None:
    with pytest.raises(ValueError, match="@rx.memo"):
        rx.foreach(
            CompileTestPage.contexts,
            lambda item: use_subscription(item, state=CompileTestSubscriptions),
        )


def test_state_must_subclass_subscription_state() -> None:
    with pytest.raises(TypeError, match="SubscriptionState"):
        use_subscription("/a", state=CompileTestPage)  # type: ignore[arg-type]


def test_visibility_tracker_listens_for_visibilitychange():
    from kilo_web.web.visibility import page_visibility_tracker

    hooks = "".join(str(hook) for hook in page_visibility_tracker()._get_all_hooks())
    assert 'addEventListener("visibilitychange"' in hooks
    assert 'removeEventListener("visibilitychange"' in hooks
    assert "set_page_visible" in hooks
    assert hooks.rstrip().endswith("}, []);")
