"""Same-run A/B of two builds on W4: alternating processes of bench/cpu_time_w4.py.

    python bench/ab_w4.py DIR_A DIR_B [pairs] [rounds]

DIR_A and DIR_B each hold an installed copy of gradclip (for example
``pip install --no-deps -t DIR_A .`` from two checkouts). Each pair runs
``bench/cpu_time_w4.py rounds`` once with DIR_A first on ``PYTHONPATH`` and once with DIR_B,
in alternating order (A B, B A, A B, ...), so that a change in the machine's load falls on
both. The target is the process's: set ``GRADCLIP_CPU_TARGET`` to force one. Printed: per
case and peer, the medians over the pairs of A, of B and of the per-pair difference B - A,
and the range of the differences.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("cpu_time_w4.py")
LINE = re.compile(r"^\s+(\S+)\s+([0-9.]+) us")
CASE = re.compile(r"^W4 (\S+), target (\S+),")


def run(path: str, rounds: int) -> tuple[str, dict[tuple[str, str], float]]:
    env = dict(os.environ, PYTHONPATH=path)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(rounds)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    case, target, got = "", "", {}
    for line in out.splitlines():
        if m := CASE.match(line):
            case, target = m.group(1), m.group(2)
        elif m := LINE.match(line):
            got[(case, m.group(1))] = float(m.group(2))
    return target, got


def main() -> None:
    a, b = sys.argv[1], sys.argv[2]
    pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 9
    res: dict[str, list[dict[tuple[str, str], float]]] = {"A": [], "B": []}
    targets = set()
    for i in range(pairs):
        order = (("A", a), ("B", b)) if i % 2 == 0 else (("B", b), ("A", a))
        for name, path in order:
            t, got = run(path, rounds)
            targets.add(t)
            res[name].append(got)
    tgt = "/".join(sorted(targets))
    print(f"target {tgt}, {pairs} pairs of alternating processes, {rounds} rounds each")
    for key in res["A"][0]:
        if key[1] not in ("gradclip", "gradclip-set"):
            continue
        va = [r[key] for r in res["A"]]
        vb = [r[key] for r in res["B"]]
        d = [y - x for x, y in zip(va, vb, strict=True)]
        ma, mb = statistics.median(va), statistics.median(vb)
        print(
            f"  {key[0]:6} {key[1]:13} A {ma:6.2f}  B {mb:6.2f}"
            f"  B-A {statistics.median(d):+6.2f} us  [{min(d):+.2f}, {max(d):+.2f}]"
        )


if __name__ == "__main__":
    main()
