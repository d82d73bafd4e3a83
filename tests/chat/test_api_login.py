"""POST /api/login and DELETE /api/login: session tokens for API clients."""

from __future__ import annotations

import httpx
import pytest

from tests.chat.conftest import TEST_PASSWORD


def test_login_gives_a_token_that_works_until_logout(api_url, people):
    response = httpx.post(f"{api_url}/api/login",
                          json={"username": "alice", "password": TEST_PASSWORD})

    assert response.status_code == 201
    body = response.json()
    assert body["userId"] == people.alice.id
    headers = {"Authorization": f"Bearer {body['token']}"}
    assert httpx.get(f"{api_url}/api/me", headers=headers).json()["id"] == people.alice.id
    assert httpx.delete(f"{api_url}/api/login", headers=headers).json() == {"loggedOut": True}
    after = httpx.get(f"{api_url}/api/me", headers=headers)
    assert after.status_code == 401


@pytest.mark.parametrize("username, password", [
    ("alice", "wrong password"),
    ("nobody", "whatever"),
    ("kilobot", TEST_PASSWORD),
    ("alice", "x" * 73),
    ("alice", ""),
], ids=["wrong-password", "unknown-user", "disabled-bot", "too-long", "empty"])
def test_login_refusals_look_alike(api_url, people, username, password):
    response = httpx.post(f"{api_url}/api/login",
                          json={"username": username, "password": password})

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    assert password not in response.text or not password


def test_login_needs_strings(api_url):
    response = httpx.post(f"{api_url}/api/login", json={"username": 7})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_body"
