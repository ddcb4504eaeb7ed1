"""PNG plots from bench/results/*.json: encode throughput vs batch size, query latency distributions, where an
ingest's wall time goes, and continuous indexing's freshness and queue depth against the upload rate.

    python bench/plots.py"""

from __future__ import annotations

import json

from _util import RESULTS


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    ingests = sorted(RESULTS.glob("ingest_*.json"))
    if ingests:
        fig, ax = plt.subplots(figsize=(6, 4))
        for path in ingests:
            r = json.loads(path.read_text())["result"]
            sizes = sorted(r["batch_sweep"], key=int)
            ax.plot([int(s) for s in sizes], [r["batch_sweep"][s] for s in sizes], marker="o",
                    label=f"{path.stem.removeprefix('ingest_')} ({r['device']})")
        ax.set(xscale="log", xlabel="batch size", ylabel="chunks / s (encode only)",
               title="all-MiniLM-L6-v2 encode throughput vs batch size")
        ax.set_xticks([4, 8, 16, 32, 64, 128], labels=["4", "8", "16", "32", "64", "128"])
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "batch_size.png", dpi=120)
        made.append("batch_size.png")

        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.7 * len(ingests)))
        for i, path in enumerate(ingests):
            r = json.loads(path.read_text())["result"]
            left = 0.0
            for phase, sec in r["phase_seconds"].items():
                ax.barh(i, sec, left=left, label=phase if i == 0 else None)
                left += sec
        ax.set_yticks(range(len(ingests)), labels=[p.stem.removeprefix("ingest_") for p in ingests])
        ax.set(xlabel="seconds", title="ingest wall time by phase")
        ax.legend(ncol=5, fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(RESULTS / "ingest_phases.png", dpi=120)
        made.append("ingest_phases.png")

    query = RESULTS / "query.json"
    if query.exists():
        results = json.loads(query.read_text())["results"]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
        for ax, key, title in zip(axes, ["raw_samples_ms", "search_dense_samples_ms"],
                                  ["raw MilvusClient.search (top 10)", "millrace search, dense (embed + search)"]):
            ax.boxplot([r[key] for r in results], whis=(1, 99), showfliers=True)
            ax.set_xticks(range(1, len(results) + 1),
                          labels=[f"{r['engine']}\n{r['vectors'] // 1000:,}k" for r in results], fontsize=8)
            ax.set(ylabel="ms", yscale="log", title=title)
        fig.suptitle("query latency (whiskers p1-p99)")
        fig.tight_layout()
        fig.savefig(RESULTS / "query_latency.png", dpi=120)
        made.append("query_latency.png")
    continuous = RESULTS / "continuous.json"
    if continuous.is_file():
        made.append(plot_rate_curve(json.loads(continuous.read_text())))
    print("wrote " + (", ".join(f"bench/results/{m}" for m in made) or "nothing (no results yet)"))


def plot_rate_curve(result: dict) -> str:
    """Upload rate against p50/p95 freshness (left) and the queue's largest and last-quarter depth (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["steps"]
    rates = [s["rate_per_s"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(rates, [s["p50_s"] for s in steps], marker="o", label="p50")
    left.plot(rates, [s["p95_s"] for s in steps], marker="o", label="p95")
    left.axhline(30, color="grey", linestyle=":", label="p95 bar (30 s)")
    batch = result["batch"]["docs_per_s"]
    big = (result.get("burst_batch") or {}).get("docs_per_s")
    for ax in (left, right):
        ax.axvline(0.8 * batch, color="green", linestyle="--", label=f"0.8 x batch of {result['batch']['docs']} "
                                                                      f"({0.8 * batch:.2f}/s)")
        if big:
            ax.axvline(0.8 * big, color="olive", linestyle="-.", label=f"0.8 x batch of "
                                                                      f"{result['burst_batch']['docs']} ({0.8 * big:.2f}/s)")
    left.set(xlabel="uploads / s", ylabel="upload -> searchable (s)", yscale="log", title="freshness")
    right.plot(rates, [s["queue_max"] for s in steps], marker="o", label="largest")
    right.plot(rates, [s["queue_last_quarter"] for s in steps], marker="o", label="mean, last quarter of the step")
    right.set(xlabel="uploads / s", ylabel="changes queued", title="queue depth")
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.suptitle(f"continuous indexing, {result['args']['step_s']:.0f} s per step")
    fig.tight_layout()
    fig.savefig(RESULTS / "continuous_rate.png", dpi=120)
    return "continuous_rate.png"


if __name__ == "__main__":
    main()
