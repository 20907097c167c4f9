"""The browser tests' service (a real `pqm serve`), a speaker with an invite link, speech
for the fake microphone, and where screenshots and axe results go."""

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.browser.support.browser import axe_violations, screenshot, serious
from tests.browser.support.server import PqmServer, service_environment
from tests.browser.support.voice import Voice, voice_for
from tests.conftest import bearer

ADMIN_KEY = "browser-test-admin-key-0123456789"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_en_dir: Path) -> Iterator[PqmServer]:
    work = tmp_path_factory.mktemp("pqm-serve")
    environment = service_environment(work / "data", tiny_en_dir, ADMIN_KEY)
    with PqmServer(environment, work / "server.log") as running:
        yield running


@pytest.fixture(scope="session")
def admin(server: PqmServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_KEY), timeout=120) as client:
        yield client


@dataclass(frozen=True, slots=True)
class Speaker:
    id: str
    name: str
    api_key: str
    link: str
    """The invite link's URL, its token in the fragment."""


@pytest.fixture
def speaker(admin: httpx.Client) -> Speaker:
    name = f"speaker-{uuid.uuid4().hex[:6]}"
    user = admin.post("/v1/users", json={"name": name})
    assert user.status_code == 201, user.text
    link = admin.post(f"/v1/users/{user.json()['id']}/links")
    assert link.status_code == 201, link.text
    return Speaker(user.json()["id"], name, user.json()["api_key"], link.json()["url"])


@pytest.fixture
def voices(tmp_path: Path) -> Callable[[str], Voice]:
    return lambda sentence: voice_for(sentence, tmp_path)


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PQM_SCREENSHOTS_DIR (docs/screenshots refreshes the committed set), else a temporary
    directory."""
    configured = os.environ.get("PQM_SCREENSHOTS_DIR")
    directory = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def axe_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("axe")


Check = Callable[[WebDriver, str], None]


@pytest.fixture
def check_view(screenshots: Path, axe_results: Path) -> Check:
    """Screenshots the page as `name`.png and asserts that axe-core finds nothing serious or
    critical on it; every violation found, of any impact, is kept in `name`.json."""

    def check(driver: WebDriver, name: str) -> None:
        screenshot(driver, screenshots / f"{name}.png")
        violations = axe_violations(driver)
        (axe_results / f"{name}.json").write_text(json.dumps(violations, indent=2))
        assert serious(violations) == [], violations

    return check
