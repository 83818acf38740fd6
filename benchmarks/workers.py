"""Trials per hour with 1 and 2 local workers on one PostgreSQL study, and what a kill -9 of one worker costs.

A throwaway PostgreSQL cluster is started on loopback (tests/servers.py: initdb/pg_ctl as the postgres user); each
configuration gets a database of its own and a fresh workdir. Every worker trains with one thread
(`study.train_threads=1`), so two workers on a 2-core machine each have a core; measurements still wait for the
other worker's training (the host lock), which is the price of honest timings on one host.

    python benchmarks/workers.py [--trials 12] [--fast]

1. Throughput: `nas search study.workers=K study.max_trials=N` for K = 1, 2; trials per hour = N / wall time
   (without the closing re-evaluation, `study.reeval_top_k=0`: it runs once, after the trials, in one worker).
   Goal: 2 workers at least 1.7x one.
2. Kill: two workers on a study of N trials, one killed with SIGKILL mid-trial; counted afterwards: duplicated
   archs among completed trials and finished trials missing (goal: 0 and 0).

`--fast` uses the tests' small settings (64 px, one epoch): it checks the machinery quickly, but its trials are so
short that start-up and locking dominate; quote the default settings' figures. Prints progress and a Markdown table;
writes benchmarks/results/workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import postgres_server

NAS = str(Path(sys.executable).with_name("nas"))
FAST = ["search_space.resolution=[64]", "target.input_shape=[1,3,64,64]", "target.warmup=2", "target.repeats=10",
        "target.rounds=2", "target.round_pause_s=0", "target.tolerance=0", "target.drift_tolerance=0",
        "dataset.proxy_scale=0.25", "study.epochs=1", "study.reeval_top_k=0"]
COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def command(url: str, wd: Path, trials: int, fast: bool, *extra: str) -> list[str]:
    return [NAS, "search", f"study.storage={url}", f"workdir={wd}", f"study.max_trials={trials}",
            f"study.n_trials={trials}", "study.train_threads=1", "card_runtimes=[]", "format=json",
            *(FAST if fast else []), *extra]


def study_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    names = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=names[0], storage=url).trials if names else []


def throughput(url: str, root: Path, workers: int, trials: int, fast: bool) -> dict:
    print(f"[throughput] {workers} worker(s), {trials} trials ...", flush=True)
    t0 = time.monotonic()
    # Without the closing re-evaluation: it runs once, in one worker, after the trials, and is not a trial.
    res = subprocess.run(command(url, root / f"w{workers}", trials, fast, f"study.workers={workers}",
                                 "study.reeval_top_k=0"),
                         capture_output=True, text=True)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"search with {workers} worker(s) failed: {res.stderr.strip().splitlines()[-1:]}")
    done = sum(t.state in COUNTED for t in study_trials(url))
    print(f"[throughput] {workers} worker(s): {done} trials in {wall:.0f} s = {3600 * done / wall:.1f} /h",
          flush=True)
    return {"workers": workers, "trials": done, "wall_s": wall, "per_hour": 3600 * done / wall}


def kill_one(url: str, root: Path, trials: int, fast: bool) -> dict:
    print(f"[kill] two workers, {trials} trials, one killed mid-trial ...", flush=True)
    # One workdir, as two workers on one host share it (their MLflow store is the workdir's unless tracking.uri
    # names a server).
    procs = [subprocess.Popen(command(url, root / "k", trials, fast), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        victim = None
        while victim is None:  # the first trial seen running with its MLflow run open, after one has finished
            ts = study_trials(url)
            running = [t for t in ts if t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]
            if running and any(t.state == optuna.trial.TrialState.COMPLETE for t in ts):
                victim = running[0]
            time.sleep(0.2)
        pid = victim.user_attrs["worker"]["pid"]
        os.kill(pid, signal.SIGKILL)
        print(f"[kill] killed pid {pid} during trial {victim.number}", flush=True)
        survivor = next(p for p in procs if p.pid != pid)
        _out, err = survivor.communicate()
        if survivor.returncode != 0:
            raise SystemExit(f"the surviving worker failed: {err.strip()[-3000:]}")
    finally:
        for p in procs:
            p.kill()
            p.wait()
    ts = study_trials(url)
    done = [t for t in ts if t.state == optuna.trial.TrialState.COMPLETE]
    hashes = [t.user_attrs["arch_hash"] for t in done]
    counted = sum(t.state in COUNTED for t in ts)
    out = {"trials": len(ts), "complete": len(done), "duplicated": len(hashes) - len(set(hashes)),
           "lost": max(0, trials - counted), "victim": victim.number,
           "victim_state": next(t.state.name for t in ts if t.number == victim.number),
           "retried": sum(1 for t in ts if t.system_attrs.get("failed_trial") == victim.number)}
    print(f"[kill] {out}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--fast", action="store_true", help="the tests' small settings (see the docstring)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "workers.json"))
    ap.add_argument("--kill-only", action="store_true", help="only the kill -9 check (keeps the stored throughput)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nas-workers-"))
    stored = json.loads(Path(args.out).read_text()) if args.kill_only and Path(args.out).exists() else {}
    with postgres_server(("w1", "w2", "kill")) as pg:
        one = stored["one"] if args.kill_only else throughput(f"{pg}/w1", root, 1, args.trials, args.fast)
        two = stored["two"] if args.kill_only else throughput(f"{pg}/w2", root, 2, args.trials, args.fast)
        killed = kill_one(f"{pg}/kill", root, args.trials, args.fast)
    result = {"trials": args.trials, "fast": args.fast, "cpus": os.cpu_count(), "one": one, "two": two,
              "speedup": two["per_hour"] / one["per_hour"], "kill": killed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| workers | trials | wall | trials/hour |\n|---|---|---|---|")
    for r in (one, two):
        print(f"| {r['workers']} | {r['trials']} | {r['wall_s']:.0f} s | {r['per_hour']:.1f} |")
    print(f"\nspeed-up 2 vs 1: {result['speedup']:.2f}x (goal >= 1.7x); after a kill -9: "
          f"{killed['duplicated']} duplicated, {killed['lost']} lost (goal 0 and 0)")


if __name__ == "__main__":
    main()
