"""Compose's nginx config, rendered as the nginx image renders it, is one nginx accepts (quick:
the cluster test runs it for real)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cluster import nginx_bin, nginx_template, write_nginx_config


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_rendered_config(tmp_path: Path) -> None:
    main_conf = write_nginx_config(tmp_path / "nginx", 8080, [8001, 8002])
    rendered = (tmp_path / "nginx" / "pqm.conf").read_text()
    assert "${" not in rendered  # every variable the template names is in compose
    checked = subprocess.run(
        [nginx_bin(), "-t", "-p", str(tmp_path / "nginx"), "-c", str(main_conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


def test_only_transcriptions_are_replayed_on_another_replica() -> None:
    """A POST that may have reached a replica is sent again only where a second run is
    harmless; an enrolment's retry is the client's, with its Idempotency-Key."""
    template = nginx_template().read_text()
    blocks = template.split("location ")
    replayed = [block.split("{")[0].strip() for block in blocks if "non_idempotent" in block]
    assert replayed == ["~ ^/v1/audio/(transcriptions|translations)$"]
