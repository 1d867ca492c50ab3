"""The two charts of `cachetap simulate --plot`: hit ratio over time, and savings against cache size."""

from __future__ import annotations

from pathlib import Path


def plot(path: Path, runs: list[dict]) -> None:
    """`runs`: dicts with policy, capacity, result (SimResult). Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (over_time, by_size) = plt.subplots(1, 2, figsize=(12, 4.5))
    smallest = min(r["capacity"] for r in runs)   # where policies differ most
    for run in runs:
        if run["capacity"] == smallest and run["result"].timeline:
            t0 = run["result"].timeline[0][0]
            over_time.plot([(t - t0) / 86_400 for t, _ in run["result"].timeline],
                           [bhr for _, bhr in run["result"].timeline], label=run["policy"])
    over_time.set(title=f"Byte hit ratio so far ({smallest / 1e9:,.0f} GB cache)", xlabel="days",
                  ylabel="byte hit ratio", ylim=(0, 1))
    over_time.legend()
    for policy in dict.fromkeys(r["policy"] for r in runs):
        points = sorted((r["capacity"], r["result"].net_saved) for r in runs if r["policy"] == policy)
        by_size.plot([c / 1e9 for c, _ in points], [s / 1e12 for _, s in points], marker="o", label=policy)
    by_size.set(title="Origin bytes saved (served from cache - fetched for it)", xlabel="cache size, GB",
                ylabel="TB saved")
    by_size.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
