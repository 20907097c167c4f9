import json

from bench.common import REPO_ROOT
from bench.longform import DEFAULT_SYSTEMS, table


def test_a_report_from_before_systems_were_chosen_reads_with_the_defaults() -> None:
    report = json.loads((REPO_ROOT / "docs" / "benchmarks" / "longform.json").read_text())

    headers, rows = table(report)

    assert headers[2::3] == [f"{name} s" for name in DEFAULT_SYSTEMS]
    assert len(rows) == len(report["recordings"])


def test_without_faster_whisper_latency_is_a_ratio_of_the_first_system() -> None:
    result = {"latency_s": 2.0, "wer": 0.1}
    slower = {"latency_s": 3.0, "wer": 0.2}
    report = {
        "systems": ["pqm-sequential", "pqm-conditioned"],
        "recordings": [
            {
                "source": "espeak",
                "seconds": 120.0,
                "systems": {"pqm-sequential": result, "pqm-conditioned": slower},
            }
        ],
    }

    headers, rows = table(report)

    assert headers[3] == "x pqm-sequential"
    assert rows == [["espeak", "120 s", "2.0", "1.00", "0.100", "3.0", "1.50", "0.200"]]
