"""Longer schema fuzzing run than tests/test_fuzz.py, with the same targets and checks.

    python bench/fuzz_schema.py                          # 500 examples per target, random seed
    python bench/fuzz_schema.py --max-examples 100 --seed 1 --only predict
    python bench/fuzz_schema.py --out bench/results/fuzz/fuzz.md

schemathesis generates requests from the service's own /openapi.json and sends them to the
real app over ASGI (lifespan run, weights loaded; small body and batch limits so that 413s are
reachable): every operation in positive and negative mode, once per request body (multipart
and JSON), and with the loaded model's name as well as generated names. Then the generators the
schema cannot express: v2 tensors (JSON and binary, compressed or not, right or wrong in a few
ways), image files of every mode and format (whole, truncated, random bytes behind real
signatures) and JSON pixel arrays. Every response goes through the checks of tests/test_fuzz.py:
no 5xx, documented status, content type, body and headers as documented, negative data
rejected. Failures are collected rather than stopping the run; the exit status is 1 if any.
Produces: docs/security.md (the longer fuzzing run). Results: bench/results/fuzz/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import schemathesis  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from tests import test_fuzz as fz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=500, help="per target")
    parser.add_argument("--seed", type=int, default=None, help="default: a random seed")
    parser.add_argument("--only", default="", help="regex on the target labels")
    parser.add_argument("--model", default=fz.MODEL, help="the one model loaded and named")
    parser.add_argument("--out", type=Path, help="write the summary as markdown here too")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)

    logging.getLogger("service").setLevel(logging.WARNING)  # no access log line per request
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # malformed parts: expected
    fz.MODEL = args.model  # read at call time by the tests' helpers
    app = fz.make_app(args.model)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=fz.CONFIG)
    only = re.compile(args.only)

    rows, failures, total = [], {}, fz.Outcome()
    started = time.monotonic()
    jobs: list[tuple[str, object]] = [(str(t), t) for t in fz.targets(app.openapi())]
    jobs += [(g.label, g) for g in fz.GENERATORS]
    for label, job in jobs:
        if not only.search(label):
            continue
        t0 = time.monotonic()
        try:
            if isinstance(job, fz.Target):
                outcome = fz.fuzz(schema, job, args.max_examples, seed=seed)
            else:
                n = args.max_examples * job.weight
                outcome = fz.run_generator(schema, job, n, seed=seed)
        except Unsatisfiable:
            outcome = fz.Outcome()
        elapsed = time.monotonic() - t0
        total.merge(outcome)
        failures.update(outcome.failures)
        statuses = " ".join(f"{c}:{n}" for c, n in sorted(outcome.statuses.items(), key=str))
        rows.append((label, outcome.examples, statuses, len(outcome.failures), elapsed))
        print(
            f"{label:<72} {outcome.examples:>6} ex  {elapsed:6.1f}s  "
            f"failures {len(outcome.failures)}  [{statuses}]",
            flush=True,
        )

    wall = time.monotonic() - started
    summary = render(args, seed, rows, total, failures, wall)
    print()
    print(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(summary)
        print(f"written to {args.out}")
    return 1 if failures else 0


def render(
    args: argparse.Namespace,
    seed: int,
    rows: list[tuple[str, int, str, int, float]],
    total: fz.Outcome,
    failures: dict[str, str],
    wall: float,
) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    command = "python bench/fuzz_schema.py " + " ".join(sys.argv[1:])
    lines = [
        "# Schema fuzzing (schemathesis)",
        "",
        f"- command: `{command.strip()}` (seed {seed})",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}",
        f"- machine: {platform.machine()}, {platform.python_version()}, "
        f"schemathesis {schemathesis.__version__}",
        f"- model: {args.model}; limits: {fz.LIMITS}",
        f"- {total.examples} requests in {wall:.0f} s; {len(failures)} distinct failures",
        "",
        "| target | examples | statuses | failures | time |",
        "|---|---:|---|---:|---:|",
    ]
    lines += [f"| {label} | {n} | {st} | {f} | {t:.1f} s |" for label, n, st, f, t in rows]
    totals = " ".join(f"{c}:{n}" for c, n in sorted(total.statuses.items(), key=str))
    lines += ["", f"All statuses: {totals}", ""]
    if failures:
        lines += ["## Failures", ""]
        for key, text in failures.items():
            lines += [f"### {key}", "", "```", text.strip()[:1500], "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
