"""`nas search study.workers=K`: K local worker processes on one study, from one command.

Each worker is the same `nas search` with `study.workers=1`; together they add `study.n_trials` trials to the study
(a study-wide `study.max_trials`), and the last to finish tags the front, re-evaluates and exports. Their lines are
printed prefixed with the worker's number. A cluster runs the same command on each machine against a shared
`study.storage` (PostgreSQL) instead: see the README's fleet section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import optuna

from nas.config import SearchConfig, workdir_path
from nas.core.stores import study_storage_url
from nas.search.study import study_name


def _nas() -> list[str]:
    exe = Path(sys.executable).with_name("nas")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nas.cli.main"]


def stored_trials(cfg: SearchConfig) -> int:
    """How many trials the study holds now (0 when it does not exist yet)."""
    workdir = workdir_path(cfg.workdir)
    url = study_storage_url(cfg.study.storage, workdir)
    if url.startswith("sqlite") and not (workdir / "optuna.db").exists():
        return 0
    try:
        return len(optuna.load_study(study_name=study_name(cfg), storage=url).trials)
    except KeyError:
        return 0


def run_workers(cfg: SearchConfig, say: Any) -> int:
    total = cfg.study.max_trials or stored_trials(cfg) + cfg.study.n_trials
    keep = [o for o in cfg.overrides if not o.startswith(("study.workers=", "study.max_trials=", "format="))]
    argv = [*_nas(), "search", *keep, "study.workers=1", f"study.max_trials={total}", "format=json"]
    say(f"starting {cfg.study.workers} workers on study {study_name(cfg)} until it holds {total} trials")
    procs = []
    for _ in range(cfg.study.workers):
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "PYTHONWARNINGS": "ignore"}))
    last: dict[int, str] = {}

    def relay(i: int, stream: Any, keep_last: bool) -> None:
        for line in stream:
            if keep_last:
                last[i] = line
            else:
                say(f"[w{i}] {line.rstrip()}")

    threads = [threading.Thread(target=relay, args=(i, p.stderr, False), daemon=True) for i, p in enumerate(procs)]
    threads += [threading.Thread(target=relay, args=(i, p.stdout, True), daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(2)
        codes = [p.wait() for p in procs]
    for t in threads:
        t.join(timeout=5)
    results = {i: _json(line) for i, line in last.items()}
    exported = [(i, r) for i, r in results.items() if r.get("export")]
    if exported:
        i, r = exported[-1]
        e = r["export"]
        say(f"worker {i} exported trial {e['trial']} ({e['label']}) to {e['path']}")
    if cfg.format == "json":
        print(json.dumps({"workers": cfg.study.workers, "exit_codes": codes, "study": study_name(cfg),
                          "max_trials": total, "export": exported[-1][1]["export"] if exported else None,
                          "results": results}))
    return max(codes) if all(c in (0, 130) for c in codes) else next(c for c in codes if c not in (0, 130))


def _json(line: str) -> dict[str, Any]:
    try:
        return json.loads(line)
    except ValueError:
        return {}
