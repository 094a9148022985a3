"""Training throughput of `mobillm serve --ray local --ray-actors N` (N = 1, 2, 4) against the in-process server.

The simulated devices of ``load.py`` (random int8 activations of the tiny model, the real protocol) run as
asyncio tasks in this process, one job each; every job trains 2 epochs (the second replays from the cache).
Each repeat starts every server set-up in turn: one `mobillm serve` process (with --ray: a private Ray cluster
of this machine's cores), a warm-up round with one job per actor (not recorded: every actor imports torch
and loads the model head), then one round per device count. Measured per round: samples trained per second, all jobs together
(training steps × batch size / wall time from the first Hello to the last SideNet), ack latency, the CPU
seconds of the server's process tree and of this process (the devices), and how busy the machine's cores were.

    python benchmarks/ray_throughput.py [--devices 8 16 32] [--actors 1 2 4] [--batches 30] [--repeats 3]

Writes results/ray_throughput/{results.json,results.csv,throughput.png}.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from load import ROOT, B, run, start_server, tiny_jobs

from mobillm.bench.io import machine, pyplot, write_rows


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (with --ray: the Ray cluster it started and its actors)."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for p in processes:
        try:
            t = p.cpu_times()
            seconds[p.pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def stop(server) -> None:
    """SIGINT (serve shuts its Ray cluster down on the way out); then any of its processes left, by pid."""
    processes = tree(server.pid)
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=60)
    except Exception:  # noqa: BLE001 - still running: killed below with the rest
        pass
    for p in processes:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def round_(url: str, scratch: Path, names: list[str], batches: int, window: int, server_pid: int) -> dict:
    """One round: ``names`` jobs at once; what it trained, how fast, and the CPU it took."""
    hellos, tokens = tiny_jobs(scratch, names, batches)
    latencies: list[float] = []
    server_before, me_before = cpu_seconds(tree(server_pid)), psutil.Process().cpu_times()
    machine_before = psutil.cpu_times()
    start = time.perf_counter()
    steps = asyncio.run(run(url, hellos, tokens, batches, window, latencies))
    wall = time.perf_counter() - start
    server_after, me_after, machine_after = cpu_seconds(tree(server_pid)), psutil.Process().cpu_times(), psutil.cpu_times()
    if any(s != 2 * batches for s in steps):
        raise SystemExit(f"a job did not train both epochs: {steps}")
    total = sum(machine_after) - sum(machine_before)  # CPU seconds of all cores together
    busy = total - (machine_after.idle + machine_after.iowait - machine_before.idle - machine_before.iowait)
    server_cpu = sum(server_after[pid] - server_before.get(pid, 0.0) for pid in server_after)
    devices_cpu = sum(me_after[:2]) - sum(me_before[:2])
    q = statistics.quantiles(latencies, n=100)
    samples = sum(steps) * B
    return {
        "devices": len(names), "samples_trained": samples, "wall_seconds": round(wall, 3),
        "samples_per_second": round(samples / wall, 1),
        "ack_p50_ms": round(1000 * q[49], 2), "ack_p95_ms": round(1000 * q[94], 2),
        "server_cpu_seconds": round(server_cpu, 2), "devices_cpu_seconds": round(devices_cpu, 2),
        # what else ran on the machine meanwhile (other users, the kernel): it shares the same cores
        "other_cpu_seconds": round(busy - server_cpu - devices_cpu, 2),
        "machine_busy_percent": round(100 * busy / total, 1),
    }


def medians(rows: list[dict]) -> list[dict]:
    """Per (server, devices): the median over repeats of throughput and server CPU per sample."""
    table = []
    for key in sorted(dict.fromkeys((r["server"], r["devices"]) for r in rows), key=lambda k: (k[0] != "in-process", k)):
        mine = [r for r in rows if (r["server"], r["devices"]) == key]
        table.append({
            "server": key[0], "devices": key[1],
            "samples_per_second": statistics.median(r["samples_per_second"] for r in mine),
            "min": min(r["samples_per_second"] for r in mine), "max": max(r["samples_per_second"] for r in mine),
            "server_cores": round(statistics.median(r["server_cpu_seconds"] / r["wall_seconds"] for r in mine), 2),
            "server_cpu_ms_per_sample": round(statistics.median(1000 * r["server_cpu_seconds"] / r["samples_trained"] for r in mine), 3),
            "ack_p50_ms": statistics.median(r["ack_p50_ms"] for r in mine),
            "machine_busy_percent": statistics.median(r["machine_busy_percent"] for r in mine),
        })
    return table


def plot(rows: list[dict], out: Path) -> None:
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    table = medians(rows)
    for server in dict.fromkeys(r["server"] for r in table):
        mine = [r for r in table if r["server"] == server]
        devices = [r["devices"] for r in mine]
        left.plot(devices, [r["samples_per_second"] for r in mine], marker="o", label=server)
        right.plot(devices, [r["server_cpu_ms_per_sample"] for r in mine], marker="o", label=server)
    left.set(xlabel="simulated devices (one job each)", ylabel="samples trained / s (all jobs)", xscale="log", ylim=(0, None))
    right.set(xlabel="simulated devices (one job each)", ylabel="server CPU ms / sample trained", xscale="log", ylim=(0, None))
    for ax in (left, right):
        ax.set_xticks(devices, [str(d) for d in devices])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    left.legend()
    fig.suptitle(f"mobillm serve, tiny model, {machine()}")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, default=30, help="training batches per device (of 8 samples)")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds per (server, devices); the table takes the median")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ray_throughput")
    args = parser.parse_args()

    rows = []
    for repeat in range(args.repeats):  # outermost: a change in the machine's other load hits every set-up alike
        for actors in [0, *args.actors]:  # 0: the in-process server
            server_name = f"ray, {actors} actor{'s' * (actors > 1)}" if actors else "in-process"
            scratch = Path(tempfile.mkdtemp(prefix="mobillm-ray-throughput-"))
            options = ["--ray", "local", "--ray-actors", str(actors)] if actors else []
            server, url = start_server(scratch / "jobs", args.window, *options)
            try:
                round_(url, scratch, [f"warmup{i}" for i in range(max(actors, 1))], 2, args.window, server.pid)
                for devices in args.devices:
                    names = [f"d{devices}-{i:02d}" for i in range(devices)]
                    row = {"server": server_name, "actors": actors, "repeat": repeat,
                           **round_(url, scratch, names, args.batches, args.window, server.pid)}
                    print(row, flush=True)
                    rows.append(row)
            finally:
                stop(server)
    args.out.mkdir(parents=True, exist_ok=True)
    write_rows(args.out, rows, machine=machine(), batches_per_device=args.batches, batch_size=B, epochs=2,
               window=args.window, command="python benchmarks/ray_throughput.py " + " ".join(
                   f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items() if k != "out"))
    plot(rows, args.out)
    for row in medians(rows):
        print(" | ".join(str(v) for v in row.values()))


if __name__ == "__main__":
    main()
