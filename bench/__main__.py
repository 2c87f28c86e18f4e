"""``python -m bench``: meshadapter vs socketio.AsyncRedisManager, side by side.

Run from the repository root. See ``bench/README.md`` for what each number
means. Exit status is 0 when every manager that was run produced sane
numbers (a meshadapter that cannot be imported is reported as skipped, not
as a failure), 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from bench import report
from bench.cluster import RedisServer, kill_all_sync
from bench.raw import raw_redis, raw_zmq
from bench.scenarios import SCENARIOS, Params, run_cluster

REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="~1 minute smoke run (3 nodes, short bursts); output under OUT/tmp/quick")
    p.add_argument("--nodes", default=None,
                   help="comma-separated node counts (default 2,4,8; --quick: 3)")
    p.add_argument("--managers", default="redis,mesh,mesh-csr",
                   help="comma list of: redis, mesh, mesh-csr (mesh with recovery_window=60), "
                        "mesh-csr-r0 (the same with recovery_replicas=0)")
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="results directory")
    p.add_argument("--receivers-per-node", type=int, default=1)
    p.add_argument("--client-workers", type=int, default=2,
                   help="load-generator processes holding the Socket.IO clients")
    p.add_argument("--emit-concurrency", type=int, default=1,
                   help="coroutines emitting in parallel on node 0 in the throughput runs")
    p.add_argument("--scenarios", default="",
                   help="comma list of scenarios to run (default all): " + ", ".join(SCENARIOS))
    p.add_argument("--lat-count", type=int, default=None,
                   help="broadcasts in the latency scenario (default 600; --quick 150)")
    p.add_argument("--no-raw", action="store_true", help="skip the raw pyzmq/redis ceilings")
    p.add_argument("--no-forwarding", action="store_true",
                   help="skip the sticky-free forwarded-polling probe (bench/forwarding.py)")
    p.add_argument("--profile", default="",
                   help="cProfile node 0 and node 1 of each cluster into OUT/tmp/profiles/ "
                        "(comma list of manager/nodes, e.g. mesh/2; 'all' for every cluster)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--budget", type=float, default=None,
                   help="hard wall-clock cap in seconds (default 900; --quick: 180)")
    return p.parse_args(argv)


def make_params(args: argparse.Namespace) -> Params:
    scen = tuple(x.strip() for x in args.scenarios.split(",") if x.strip())
    unknown = [x for x in scen if x not in SCENARIOS]
    if unknown:
        raise SystemExit(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIOS)}")
    base = Params(receivers_per_node=args.receivers_per_node, client_workers=args.client_workers,
                  emit_concurrency=args.emit_concurrency, scenarios=scen)
    if args.lat_count:
        base = replace(base, lat_count=args.lat_count)
    if args.quick:
        return replace(base, lat_count=args.lat_count or 150, lat_rate=300.0, thr_duration=1.0,
                       thr_max_small=20_000, thr_max_large=3_000, ack_count=50, idle=2.0,
                       startup_timeout=30.0)
    return base


def params_for(params: Params, n_nodes: int) -> Params:
    """Keep the big clusters small: 2 cores have to run every process."""
    if n_nodes >= 8:
        return replace(params, lat_count=max(100, params.lat_count // 2),
                       thr_duration=max(1.0, params.thr_duration * 2 / 3),
                       ack_count=max(50, params.ack_count // 2))
    return params


def check_mesh(env: Dict[str, str]) -> Optional[str]:
    """None if ``meshadapter.AsyncMeshManager`` imports (in a child), else the reason."""
    code = "import meshadapter; meshadapter.AsyncMeshManager"
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env,
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "import meshadapter timed out"
    if r.returncode == 0:
        return None
    last = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
    return f"meshadapter not importable ({last})"


def sanity(run: Dict[str, Any]) -> List[str]:
    """Problems that make a cluster run's numbers meaningless."""
    problems = []
    if "latency" in run and not run["latency"].get("cross_node_ms", {}).get("n"):
        problems.append("no cross-node latency sample")
    for key, value in run.items():
        if key.startswith("throughput_") and not value.get("delivered"):
            problems.append(f"{key}: nothing delivered")
    if "ack" in run and not run["ack"].get("rtt_ms", {}).get("n"):
        problems.append("no ack round trip completed")
    if not any(k in run for k in SCENARIOS):
        problems.append("no scenario ran")
    return problems


async def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.quick:
        out = out / "tmp" / "quick"
    log_dir = out / "tmp" / "logs" if not args.quick else out / "logs"
    out.mkdir(parents=True, exist_ok=True)
    managers = [m.strip() for m in args.managers.split(",") if m.strip()]
    bad = [m for m in managers if m not in report.MANAGERS]
    if bad:
        log(f"unknown manager(s): {bad}")
        return 2
    nodes_arg = args.nodes or ("3" if args.quick else "2,4,8")
    node_counts = [int(x) for x in nodes_arg.split(",")]
    if any(n < 2 for n in node_counts):
        log("--nodes: every count must be >= 2")
        return 2
    params = make_params(args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    cwd = str(REPO)

    status: Dict[str, str] = {}
    mesh_kinds = [m for m in managers if m.startswith("mesh")]
    reason = check_mesh(env) if mesh_kinds else None
    if reason:
        for m in mesh_kinds:
            status[m] = f"skipped: {reason}"
            managers.remove(m)
        log(f"meshadapter skipped: {reason}")
    profile_dir = out / "tmp" / "profiles"
    wanted_profiles = {x.strip() for x in args.profile.split(",") if x.strip()}
    results: Dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick, "nodes": node_counts, "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
            "versions": _versions(),
            "loadavg_start": _loadavg(),
            "git": _git_state(),
        },
        "raw": {}, "runs": {m: {} for m in managers}, "status": status, "errors": {},
        "forwarding": None, "profiles": {},
    }
    failed = False
    redis: Optional[RedisServer] = None
    try:
        if "redis" in managers or not args.no_raw:
            redis = RedisServer(log_dir, cwd, env)
            await redis.start()
        if not args.no_raw:
            count = 30_000 if args.quick else 100_000
            log("raw ceilings: pyzmq PUB/SUB ...")
            results["raw"]["zmq"] = await raw_zmq(count, 100, 10.0, cwd, env)
            log(f"  {results['raw']['zmq']}")
            log("raw ceilings: pyzmq PUB/SUB with zmq.asyncio ...")
            results["raw"]["zmq_asyncio"] = await raw_zmq(count, 100, 10.0, cwd, env,
                                                          use_asyncio=True)
            log(f"  {results['raw']['zmq_asyncio']}")
            assert redis is not None
            log("raw ceilings: redis pub/sub ...")
            results["raw"]["redis"] = await raw_redis(redis.url, count, 100, 10.0, cwd, env)
            log(f"  {results['raw']['redis']}")
        for n in node_counts:
            for m in managers:
                load_before = _loadavg()
                log(f"{report.LABEL[m]}: {n} nodes (load average {load_before})")
                profile: Dict[int, str] = {}
                if "all" in wanted_profiles or f"{m}/{n}" in wanted_profiles:
                    profile_dir.mkdir(parents=True, exist_ok=True)
                    profile = {i: str(profile_dir / f"{m}-n{n}-node{i}.pstats") for i in (0, 1)}
                    results["profiles"][f"{m}/{n}"] = profile
                try:
                    r = await run_cluster(m, n, params_for(params, n), log_dir, cwd, env,
                                          redis if m == "redis" else None, log, profile=profile)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    msg = f"{type(exc).__name__}: {exc}"
                    log(f"  FAILED: {msg}")
                    results["errors"][f"{m}/{n}"] = msg
                    failed = True
                    continue
                r["loadavg_before"] = load_before
                results["runs"][m][str(n)] = r
                problems = sanity(r)
                if problems:
                    results["errors"][f"{m}/{n}"] = "; ".join(problems)
                    failed = True
        if "mesh" in managers and not args.no_forwarding:
            log(f"sticky-free forwarding probe: 2 nodes (load average {_loadavg()})")
            try:
                # bench/forwarding.py (python -m bench.forwarding) is the standalone probe.
                from bench.forwarding import one_line as forwarding_line
                from bench.forwarding import run_forwarding

                log_dir.mkdir(parents=True, exist_ok=True)
                fwd = await run_forwarding(log_dir, cwd, env, count=100 if args.quick else 400,
                                           duration=10.0 if args.quick else 20.0,
                                           startup_timeout=params.startup_timeout, log=log)
                results["forwarding"] = fwd
                log(f"  {forwarding_line(fwd)}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}"
                log(f"  FAILED: {msg}")
                results["errors"]["forwarding"] = msg
                failed = True
        for m in managers:
            status.setdefault(m, "failed, see errors" if any(
                k.startswith(m + "/") for k in results["errors"]) else "ok")
    finally:
        if redis is not None:
            await redis.stop()

    results["meta"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results["meta"]["loadavg_end"] = _loadavg()
    rows = report.build_rows(results)
    results["table"] = [
        {"group": r.group, "metric": r.metric, "unit": r.unit, "better": r.better,
         "redis": r.redis, "mesh": r.mesh, "ratio_mesh_over_redis": r.ratio, "winner": r.winner}
        for r in rows
    ]
    extra = report.build_extra_rows(results)
    results["extra_table"] = [vars(e) | {"ratio": e.ratio} for e in extra]
    targets = report.build_targets(results)
    results["targets"] = targets
    table = "\n\n".join([report.render_table(rows, status), report.render_extra(extra),
                          report.render_targets(targets)])
    json_path = out / "results.json"
    report.write_json(results, json_path)
    (out / "results.md").write_text(table + "\n")
    print(table)
    for key, err in results["errors"].items():
        print(f"- error {key}: {err}")
    print(f"\nJSON: {json_path}")
    if not args.no_plots:
        for p in report.write_plots(results, out):
            print(f"plot: {p}")
    return 1 if failed else 0


def _git_state() -> str:
    """Commit under test, and whether meshadapter/ had uncommitted edits."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=str(REPO),
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "meshadapter"],
                               cwd=str(REPO), capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{head}{' + uncommitted meshadapter/ edits' if dirty else ''}"


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _versions() -> Dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("python-socketio", "python-engineio", "redis", "pyzmq", "uvicorn", "aiohttp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    try:
        out["redis-server"] = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()[2]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        out["redis-server"] = "missing"
    return out


async def _main_with_budget(args: argparse.Namespace) -> int:
    budget = args.budget or (180.0 if args.quick else 900.0)
    task = asyncio.ensure_future(run(args))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await asyncio.wait_for(task, budget)
    except asyncio.TimeoutError:
        log(f"time budget of {budget:.0f}s exhausted; stopped")
        return 1


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(_main_with_budget(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    finally:
        kill_all_sync()


if __name__ == "__main__":
    sys.exit(main())
