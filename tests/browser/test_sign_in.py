"""Signing in to the page: by invite link or user key, kept for the tab only; the admin key
and dead links refused in plain words; the page under its Content-Security-Policy."""

from html.parser import HTMLParser

import httpx
import pytest

from tests.browser.conftest import ADMIN_KEY, Check, Speaker
from tests.browser.support.browser import chromium, wait_for
from tests.browser.support.page import by_id, open_page, show, signin_shown, text_of
from tests.browser.support.server import PqmServer

pytestmark = pytest.mark.slow


class InlineCode(HTMLParser):
    """Collects what a Content-Security-Policy without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style" or (tag == "script" and "src" not in names):
            self.found.append(f"<{tag}>")
        self.found += [f"{tag} {name}" for name in names if name == "style" or name[:2] == "on"]


def test_the_page_is_served_with_a_policy_and_no_inline_code(server: PqmServer) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    parser = InlineCode()
    parser.feed(page.text)
    assert parser.found == []
    script = httpx.get(f"{server.url}/web/js/main.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/web/__init__.py").status_code == 404, "only page files"


def test_a_user_key_is_kept_for_the_tab_only(
    server: PqmServer, speaker: Speaker, check_view: Check
) -> None:
    with chromium() as driver:
        open_page(driver, server.url)
        assert signin_shown(driver)
        check_view(driver, "01-sign-in")
        by_id(driver, "signin-key").send_keys(speaker.api_key)
        by_id(driver, "signin-key").submit()
        show(driver, "overview")
        assert text_of(driver, "who") == f"Signed in as {speaker.name}"
        check_view(driver, "02-your-things-new")
        assert driver.execute_script("return sessionStorage.length;") == 1
        assert driver.execute_script("return localStorage.length;") == 0
        driver.refresh()
        open_page(driver, server.url)
        assert text_of(driver, "who") == f"Signed in as {speaker.name}"

        by_id(driver, "sign-out").click()
        open_page(driver, server.url)
        assert signin_shown(driver)
        assert driver.execute_script("return sessionStorage.length;") == 0


@pytest.mark.parametrize(
    ("key", "explained"),
    [
        (ADMIN_KEY, "That is the admin key. This page is for speakers"),
        ("pqm-not-a-key", "You are not signed in, or your sign-in has ended: Incorrect API key"),
    ],
    ids=["admin-key", "unknown-key"],
)
def test_the_admin_key_and_unknown_keys_are_refused_in_plain_words(
    server: PqmServer, key: str, explained: str
) -> None:
    with chromium() as driver:
        open_page(driver, server.url)
        by_id(driver, "signin-key").send_keys(key)
        by_id(driver, "signin-key").submit()
        assert wait_for(driver, lambda d: text_of(d, "problem")).startswith(explained)
        assert signin_shown(driver)
        assert driver.execute_script("return sessionStorage.length;") == 0


def test_a_revoked_link_says_so(server: PqmServer, admin: httpx.Client, speaker: Speaker) -> None:
    links = admin.get(f"/v1/users/{speaker.id}/links").json()["data"]
    admin.delete(f"/v1/users/{speaker.id}/links/{links[0]['id']}").raise_for_status()
    with chromium() as driver:
        open_page(driver, speaker.link)
        assert "This invite link is unknown, revoked or expired" in text_of(driver, "problem")
        assert signin_shown(driver)
        assert "#link=" not in driver.current_url
