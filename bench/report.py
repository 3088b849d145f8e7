"""Turn a benchmark run's results into the markdown table and the plot.

    python bench/report.py [bench/results/latest.json]

writes ``bench/results/latest.md`` and ``bench/results/latest.png`` (GB/s per workload
for gradclip, NumPy, PyTorch and the machine's ceiling), and prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PEER_ORDER = ["gradclip", "gradclip-set", "numpy", "torch", "torch-foreach"]


def _fmt(x, spec):
    return "—" if x is None else format(x, spec)


def markdown_table(meta: dict, rows: list[dict]) -> str:
    head = (
        f"Run of {meta['date']} on {meta['cpu']} ({meta['cores']} cores), gradclip "
        f"{meta['gradclip']} (target {meta['cpu_target']}), NumPy {meta['numpy']}"
        + (f", PyTorch {meta['torch']}" if "torch" in meta else "")
        + (f"; NumPy's BLAS: {meta['blas']}" if "blas" in meta else "")
        + (
            f" (dropped for the benchmark process: {', '.join(meta['dropped_env'])})"
            if meta.get("dropped_env")
            else ""
        )
        + ".\n\nMedian of the rounds. GB/s = bytes the minimal algorithm moves (N to read when "
        "not clipping, 3N to read, then read and write, when clipping) / time; ceiling = the "
        "same bytes over the faster, in this run, of the engine's probes (read / read+write "
        "of 64-bit words, software prefetch where the CPU gains from it) and the plain compiled "
        "float32 loops "
        "(bench/plain_ceiling.c: sum of squares / x *= c); x gradclip = peer time / gradclip "
        "time.\n"
    )
    lines = [
        head,
        "| workload | case | threads | peer | time | GB/s | ceiling GB/s | of ceiling "
        "| x gradclip |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = {p: i for i, p in enumerate(PEER_ORDER)}
    rows = sorted(
        rows, key=lambda r: (r["workload"], r["case"], r["threads"], order.get(r["peer"], 99))
    )
    for r in rows:
        t = r["median"]
        tstr = f"{t * 1e6:.1f} µs" if t < 1e-3 else f"{t * 1e3:.2f} ms"
        lines.append(
            f"| {r['workload']} | {r['case']} | {r['threads']} | {r['peer']} | {tstr} | "
            f"{r['gbps']:.1f} | {_fmt(r['ceiling_gbps'], '.1f')} | {_fmt(r['ratio'], '.2f')} | "
            f"{_fmt(r['gradclip_speedup'], '.1f')} |"
        )
    if meta.get("ceilings"):
        lines += [
            "",
            "Both ceilings, GB/s (the higher of each pair is the one the table uses):",
            "",
            "| workload | read: probe | read: plain loop | read+write: probe | "
            "read+write: plain loop |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for key, c in sorted(meta["ceilings"].items()):
            vals = [
                _fmt(c.get(p), ".1f")
                for p in ("ceiling-read", "ceiling-read-plain", "ceiling-rw", "ceiling-rw-plain")
            ]
            lines.append(f"| {key} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(meta: dict, rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the clipping benchmark's four panels (clip / noclip x 1 / 2 threads); the adaptive and
    # unscale groups are in the table
    rows = [r for r in rows if r["case"] in ("clip", "noclip") and "adaptive" not in r["workload"]]
    cases = sorted({(r["case"], r["threads"]) for r in rows})
    workloads = sorted({r["workload"] for r in rows})
    peers = [
        p
        for p in ["gradclip", "numpy", "torch", "torch-foreach"]
        if any(r["peer"] == p for r in rows)
    ]
    fig, grid = plt.subplots(2, 2, figsize=(12, 8), sharey=True)
    axes = list(grid.ravel())[: len(cases)]
    width = 0.8 / (len(peers) + 1)
    for ax, (case, nt) in zip(axes, cases, strict=True):
        for j, peer in enumerate([*peers, "ceiling"]):
            ys = []
            for wl in workloads:
                match = [
                    r
                    for r in rows
                    if r["workload"] == wl
                    and r["case"] == case
                    and r["threads"] == nt
                    and r["peer"] == ("gradclip" if peer == "ceiling" else peer)
                ]
                if not match:
                    ys.append(0.0)
                elif peer == "ceiling":
                    ys.append(match[0]["ceiling_gbps"] or 0.0)
                else:
                    ys.append(match[0]["gbps"])
            xs = [i + j * width for i in range(len(workloads))]
            ax.bar(xs, ys, width, label=peer, color="0.75" if peer == "ceiling" else None)
        ax.set_xticks([i + width * len(peers) / 2 for i in range(len(workloads))], workloads)
        ax.set_title(f"{case}, {nt} thread{'s' if nt > 1 else ''}")
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("GB/s (bytes the minimal algorithm moves / time)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"gradclip.clip_grad_norm_ vs NumPy and PyTorch — {meta['cpu']}, {meta['date']}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> None:
    src = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    data = json.loads(src.read_text())
    table = markdown_table(data["meta"], data["rows"])
    src.with_suffix(".md").write_text(table + "\n")
    plot(data["meta"], data["rows"], src.with_suffix(".png"))
    print(table)
    print(f"\nwrote {src.with_suffix('.md')} and {src.with_suffix('.png')}")


if __name__ == "__main__":
    main(sys.argv)
