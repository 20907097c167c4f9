"""Rescores the transcripts stored in a `bench.enrolment` JSON with today's WER, beside the WER
it was written with (how numbers moved when scoring changed).

    python scripts/rescore_enrolment.py [docs/benchmarks/enrolment.json]
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.engine.text import word_errors


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/benchmarks/enrolment.json")
    report = json.loads(path.read_text())
    totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for speaker in report["speakers"]:
        for split, models in speaker["splits"].items():
            for model, scored in models.items():
                utterances = scored.get("utterances", []) if isinstance(scored, dict) else []
                for utterance in utterances:
                    errors, words = word_errors(utterance["reference"], utterance["hypothesis"])
                    total = totals[speaker["suite"], split, model]
                    total[0] += utterance["errors"]
                    total[1] += utterance["words"]
                    total[2] += errors
                    total[3] += words
    print("| suite | split | model | WER as written | WER now |")
    print("|---|---|---|---|---|")
    for (suite, split, model), (old_e, old_w, new_e, new_w) in sorted(totals.items()):
        print(f"| {suite} | {split} | {model} | {old_e / old_w:.3f} | {new_e / new_w:.3f} |")


if __name__ == "__main__":
    main()
