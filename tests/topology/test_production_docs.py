"""The README's Production section against what it describes: its table of environment variables
per service against docker-compose.yml, and every `PQM_` name in the README against the settings
(a misspelt name in the docs would be worse than none: the service refuses it at start)."""

import re

import yaml

from app.config import Settings, SettingsGroup
from tests.support.cluster import COMPOSE_FILE, REPOSITORY, nginx_template

README = REPOSITORY / "README.md"
TABLE_HEADING = "### Environment per service"
SERVICES = {"api", "worker", "nginx", "postgres"}
COMPOSE_ITSELF = "compose"
"""The services column of a variable compose reads for itself (replica counts, the image)."""

NOT_SETTINGS = {
    # The Configuration section's example of a misspelt name, which stops the start.
    "PQM_ENROLMENT__GATE_FOLD",
    # Read by the tests only.
    "PQM_TEST_POSTGRES_URL",
    "PQM_SCREENSHOTS_DIR",
}
PQM_NAME = re.compile(r"\bPQM_[A-Z0-9][A-Z0-9_]*")
VARIABLE = re.compile(r"\$\{(\w+)")
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")
OPERATOR_SETS = re.compile(r"^\$\{\w+:\?")


def _setting_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        group = field.annotation
        if isinstance(group, type) and issubclass(group, SettingsGroup):
            names |= {f"PQM_{name}__{member}".upper() for member in group.model_fields}
        else:
            names.add(f"PQM_{name}".upper())
    return names


def _interpolated_names() -> set[str]:
    """What compose (`${NAME...}`) and the nginx template (`${NAME}`) read from the environment."""
    return set(VARIABLE.findall(COMPOSE_FILE.read_text() + nginx_template().read_text()))


def _table() -> dict[str, tuple[set[str], str]]:
    """The Production table: each variable named in a row's first cell -> the services of its
    row and its compose value cell."""
    text = README.read_text()
    section = text[text.index(TABLE_HEADING) :]
    section = section[: section.index("\n### ", len(TABLE_HEADING))]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "no table under " + TABLE_HEADING
    table: dict[str, tuple[set[str], str]] = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        services = {service.strip() for service in cells[1].split(",")}
        assert services <= SERVICES | {COMPOSE_ITSELF}, row
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]):
            assert name not in table, f"{name} has two rows"
            table[name] = (services, cells[2])
    return table


def test_every_pqm_name_in_the_readme_exists() -> None:
    settings = _setting_names()
    interpolated = _interpolated_names()
    assert not NOT_SETTINGS & settings
    unknown = sorted(
        name
        for name in set(PQM_NAME.findall(README.read_text()))
        if name not in settings | interpolated | NOT_SETTINGS
    )
    assert unknown == [], "neither a setting nor read by compose or nginx"


def test_the_table_names_every_variable_compose_sets_for_each_service() -> None:
    table = _table()
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(compose) == SERVICES
    for service, definition in compose.items():
        for name, value in definition.get("environment", {}).items():
            assert name in table, f"{service} gets {name}, which the table lacks"
            services, compose_value = table[name]
            assert service in services, f"{name}: the table does not say {service} reads it"
            raw = str(value)
            if OPERATOR_SETS.match(raw):
                assert "**you**" in compose_value, name
            elif DEFAULT.fullmatch(raw) is None:
                assert f"`{raw}`" in compose_value, f"{name}: compose sets {raw!r}"


def test_the_table_names_every_variable_compose_reads_with_its_default() -> None:
    table = _table()
    for name, default in DEFAULT.findall(COMPOSE_FILE.read_text()):
        assert name in table, f"compose reads {name}, which the table lacks"
        assert "**you**" in table[name][1], name
        assert default in table[name][1], f"{name}: compose's default is {default!r}"
    for name in VARIABLE.findall(COMPOSE_FILE.read_text()):
        assert name in table, f"compose reads {name}, which the table lacks"
