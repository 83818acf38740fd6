"""Trials per hour with 1 and 2 local workers on one PostgreSQL study, and what a kill -9 of one worker costs.

A throwaway PostgreSQL cluster is started on loopback (tests/servers.py: initdb/pg_ctl as the postgres user); each
configuration gets a database of its own and a fresh workdir. Every worker trains with one thread
(`study.train_threads=1`), so two workers on a 2-core machine each have a core; measurements still wait for the
other worker's training (the host lock), which is the price of honest timings on one host.

    python benchmarks/workers.py [--trials 12] [--fast]

1. Throughput: `nas search study.workers=K study.max_trials=N` for K = 1, 2; trials per hour = N / wall time
   (without the closing re-evaluation, `study.reeval_top_k=0`: it runs once, after the trials, in one worker).
   Goal: 2 workers at least 1.7x one. Both runs train the same candidates (the 2-worker study is queued with the
   1-worker run's archs) for the same epochs (one rung, `--epochs`, 2 by default: what the default rungs [1, 3]
   average per trial): with several rungs, concurrent workers see fewer finished peers and promote more, so their
   trials do more work. Each run's time is broken down (start-up, closing, trial steps, host-lock waits).
2. Kill: two workers on a study of N trials, one killed with SIGKILL mid-trial; counted afterwards: duplicated
   archs among completed trials and finished trials missing (goal: 0 and 0).

`--fast` uses the tests' small settings (64 px, one epoch): it checks the machinery quickly, but its trials are so
short that start-up and locking dominate; quote the default settings' figures. Prints progress and a Markdown table;
writes benchmarks/results/workers.json.
"""

from __future__ import annotations

import argparse
import datetime
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


def breakdown(ts: list[optuna.trial.FrozenTrial], started: datetime.datetime, ended: datetime.datetime) -> dict:
    """Where the wall time went: start-up before the first trial, the closing steps after the last, and each
    finished trial's steps (seconds summed over trials; ``wait_*`` is time spent waiting for the host lock)."""
    done = [t for t in ts if t.datetime_start and t.datetime_complete]
    if not done:
        return {}
    steps: dict[str, float] = {}
    for t in done:
        for k, v in (t.user_attrs.get("times") or {}).items():
            steps[k] = steps.get(k, 0.0) + float(v)
    return {"startup_s": (min(t.datetime_start for t in done) - started).total_seconds(),
            "closing_s": (ended - max(t.datetime_complete for t in done)).total_seconds(),
            "trial_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done),
            "steps_s": {k: round(v, 1) for k, v in sorted(steps.items(), key=lambda kv: -kv[1])}}


def same_candidates(src: str, dst: str) -> int:
    """Queue the source study's candidates, in its order, on a new study of the same name at ``dst``: both
    configurations then train the same archs (a sampler seeded per worker would otherwise pick other ones)."""
    source = optuna.load_study(study_name=optuna.get_all_study_names(src)[0], storage=src)
    study = optuna.create_study(study_name=source.study_name, storage=dst, directions=source.directions)
    done = [t for t in source.trials if t.state in COUNTED]
    for t in done:
        ref = t.user_attrs.get("reference")
        study.enqueue_trial(t.params, user_attrs={"reference": ref} if ref else None)
    return len(done)


def throughput(url: str, root: Path, workers: int, trials: int, fast: bool, *extra: str) -> dict:
    print(f"[throughput] {workers} worker(s), {trials} trials ...", flush=True)
    started = datetime.datetime.now()
    t0 = time.monotonic()
    # Without the closing re-evaluation: it runs once, in one worker, after the trials, and is not a trial.
    res = subprocess.run(command(url, root / f"w{workers}", trials, fast, f"study.workers={workers}",
                                 "study.reeval_top_k=0", *extra),
                         capture_output=True, text=True)
    wall = time.monotonic() - t0
    if res.returncode != 0:
        raise SystemExit(f"search with {workers} worker(s) failed: {res.stderr.strip().splitlines()[-1:]}")
    ts = study_trials(url)
    done = sum(t.state in COUNTED for t in ts)
    where = breakdown(ts, started, datetime.datetime.now())
    print(f"[throughput] {workers} worker(s): {done} trials in {wall:.0f} s = {3600 * done / wall:.1f} /h; "
          f"{where}", flush=True)
    return {"workers": workers, "trials": done, "wall_s": wall, "per_hour": 3600 * done / wall, **where}


def kill_one(url: str, root: Path, trials: int, fast: bool, *extra: str) -> dict:
    print(f"[kill] two workers, {trials} trials, one killed mid-trial ...", flush=True)
    # One workdir, as two workers on one host share it (their MLflow store is the workdir's unless tracking.uri
    # names a server).
    procs = [subprocess.Popen(command(url, root / "k", trials, fast, *extra), stdout=subprocess.DEVNULL,
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
    ap.add_argument("--epochs", type=int, default=2,
                    help="one rung of this many epochs for the throughput runs, so that every trial does the same "
                         "work (0: the default rungs, whose promotions differ with the number of workers)")
    ap.add_argument("--no-kill", action="store_true", help="only the throughput (keeps the stored kill check)")
    ap.add_argument("overrides", nargs="*", help="`nas search` overrides for every run (study.host_lock=false)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nas-workers-"))
    partial = args.kill_only or args.no_kill
    stored = json.loads(Path(args.out).read_text()) if partial and Path(args.out).exists() else {}
    with postgres_server(("w1", "w2", "kill")) as pg:
        x = ["study.name=workers-benchmark", *([f"study.epochs={args.epochs}"] if args.epochs else []),
             *args.overrides]
        one = stored["one"] if args.kill_only else throughput(f"{pg}/w1", root, 1, args.trials, args.fast, *x)
        if not args.kill_only:
            same_candidates(f"{pg}/w1", f"{pg}/w2")
        two = stored["two"] if args.kill_only else throughput(f"{pg}/w2", root, 2, args.trials, args.fast, *x)
        # The kill check at the default settings: it counts lost and duplicated trials, not throughput.
        killed = stored.get("kill", {}) if args.no_kill else \
            kill_one(f"{pg}/kill", root, args.trials, args.fast, *args.overrides)
    result = {"trials": args.trials, "fast": args.fast, "cpus": os.cpu_count(), "epochs": args.epochs,
              "overrides": args.overrides,
              "one": one, "two": two,
              "speedup": two["per_hour"] / one["per_hour"], "kill": killed}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| workers | trials | wall | trials/hour |\n|---|---|---|---|")
    for r in (one, two):
        print(f"| {r['workers']} | {r['trials']} | {r['wall_s']:.0f} s | {r['per_hour']:.1f} |")
    print(f"\nspeed-up 2 vs 1: {result['speedup']:.2f}x (goal >= 1.7x)")
    if killed:
        print(f"after a kill -9: {killed['duplicated']} duplicated, {killed['lost']} lost (goal 0 and 0)")


if __name__ == "__main__":
    main()
