"""The MLflow UI after a real search, checked in a real browser (headless Chromium driven by Playwright).

A small real search (64 px, one epoch) writes a temporary workdir; `mlflow server` serves its store on a free
loopback port; Chromium then opens the experiment as a new user would and checks:

1. the link `nas search` prints, opened in a fresh browser, lands on the runs view (not the GenAI overview) listing
   the front's trial runs sorted by accuracy, the same as typing `tags.pareto = "true"` into the search box; the
   experiment's bare URL is only noted: MLflow 3.17 opens it in the view of the sidebar's GenAI / Model training
   switch, kept in the browser and GenAI by default, and no tag changes that;
2. the experiment description's "Pareto front" link lands on the runs view too;
3. the chart view plots accuracy against latency over those trials (a scatter chart added as a user would);
4. the study run's description and its Pareto plot artifact;
5. the registered model's `champion` version with its description and its signature (input shape and dtype).

Screenshots go to a folder the script prints (``--out``); exit status 1 if a check failed.

Needs what it does not install: Debian's Chromium and Playwright's Python package (no `playwright install`: the
system Chromium is driven instead):

    apt-get install -y chromium
    .venv/bin/pip install playwright
    .venv/bin/python benchmarks/mlflow_ui_check.py [--out DIR] [--workdir DIR] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BUDGET = 50
MODEL = f"nas-cpu-{BUDGET}ms"
# As tests/conftest.py's FAST (but every digit, so the front has several trials): a small but real search.
SEARCH = ["search_space.resolution=[64]", "target.input_shape=[1,3,64,64]", "target.warmup=2", "target.repeats=10",
          "target.rounds=2", "target.round_pause_s=0", "target.tolerance=0", "target.drift_tolerance=0",
          "dataset.proxy_scale=0.25", "study.epochs=1", "study.reeval_top_k=0",
          "card_runtimes=[]"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
WAIT_MS = 90_000  # a busy 2-core machine renders the first page slowly


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_search(workdir: Path, trials: int) -> None:
    nas = Path(sys.executable).with_name("nas")
    cmd = [str(nas) if nas.exists() else "nas", "search", f"workdir={workdir}", f"budget_ms={BUDGET}",
           f"study.n_trials={trials}", *SEARCH]
    print("search:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def start_server(workdir: Path, port: int) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--artifacts-destination", str(workdir / "mlartifacts")]
    log = open(workdir / "mlflow-server.log", "w")  # open as long as the server runs
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read() == b"OK":
                return proc
        except OSError:
            time.sleep(1)
        if proc.poll() is not None:
            break
    proc.terminate()
    raise SystemExit(f"mlflow server did not come up: see {workdir / 'mlflow-server.log'}")


class Checks:
    def __init__(self, out: Path) -> None:
        self.out, self.results = out, []

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.results.append((name, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)

    def shot(self, page: Any, name: str, locator: Any = None) -> None:
        (locator or page).screenshot(path=str(self.out / f"{name}.png"))


def dismiss_popups(page: Any) -> None:
    """The assistant side panel and first-visit tips cover the page; a user closes them once."""
    for role, name in (("button", "Got it"), ("button", "Close")):
        button = page.get_by_role(role, name=name)
        if button.count():
            try:
                button.first.click(timeout=3000)
            except Exception:  # gone by itself meanwhile
                pass


def drive(base: str, store: dict[str, Any], chromium: str, c: Checks) -> None:
    from playwright.sync_api import sync_playwright

    experiment_id, front, latency_metric = store["experiment_id"], store["front"], store["latency_metric"]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(WAIT_MS)

        runs = page
        try:
            # 0. A fresh browser at the experiment's bare URL: MLflow 3.17 opens the view of its sidebar switch, kept
            # in the browser and GenAI by default, whatever the experiment's kind tag says. Recorded, not judged:
            # nothing a server or a tag sets changes it, which is why `nas search` prints the link of step 1.
            page.goto(f"{base}/#/experiments/{experiment_id}")
            page.locator("a", has_text="Pareto front").first.wait_for()
            page.wait_for_timeout(3000)
            genai = "workflowType=genai" in page.url or "/overview" in page.url
            print(f"NOTE  the bare experiment URL opened {page.url.split('#')[1]}"
                  + (" (the GenAI overview; its description links to the runs)" if genai else ""), flush=True)
            c.shot(page, "0-experiment-bare-url-first-visit")

            # 1. The link `nas search` prints, in a fresh browser context (no remembered switch): the runs view
            # with the front's trials as rows.
            fresh = browser.new_context(viewport={"width": 1600, "height": 1000})
            runs = fresh.new_page()
            runs.set_default_timeout(WAIT_MS)
            runs.goto(f"{base}/{store['printed_link']}")
            runs.get_by_test_id("search-box").wait_for()
            dismiss_popups(runs)
            runs.wait_for_timeout(4000)
            shown = {n for n in runs.locator("a").all_inner_texts() if n.startswith("trial-")}
            c.check("the link nas search prints opens the runs view (model training)", "/runs" in runs.url
                    and "workflowType=machine_learning" in runs.url, runs.url.split("#")[1][:80])
            c.check('it lists the front\'s trials (tags.pareto = "true")', shown == front,
                    f"shown {sorted(shown)}, front {sorted(front)}")
            c.shot(runs, "1-printed-link-pareto-front-runs")

            # 2. The experiment description's "Pareto front" link does the same from the bare URL's page.
            dismiss_popups(page)
            link = page.locator("a", has_text="Pareto front").first
            with page.context.expect_page() as opened:
                link.click()
            linked = opened.value
            linked.set_default_timeout(WAIT_MS)
            linked.get_by_test_id("search-box").wait_for()
            c.check("the description's Pareto front link lands on the runs view", "/runs" in linked.url
                    and "workflowType=machine_learning" in linked.url, linked.url.split("#")[1][:80])
            linked.close()

            # The same by hand: the search box of the runs view, sorted by accuracy (sorted by date, MLflow folds the
            # trials under their study run).
            runs.goto(f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
                      "&orderByKey=metrics.%60accuracy%60&orderByAsc=false")
            box = runs.get_by_test_id("search-box")
            box.fill('tags.pareto = "true"')
            box.press("Enter")
            runs.wait_for_timeout(4000)
            count = runs.get_by_text(re.compile(r"\d+ matching runs?")).first.inner_text()
            c.check("typing the filter matches the front's trials", count.startswith(f"{len(front)} "), count)

            # 3. Chart view: a scatter chart of accuracy against latency over the trial runs, added as a user would.
            runs.goto(runs_url(base, experiment_id, chart=True))
            add = runs.get_by_test_id("experiment-view-compare-runs-add-chart").first
            add.wait_for()
            dismiss_popups(runs)
            add.click()
            runs.get_by_role("menuitem", name="Scatter").first.click()
            dialog = runs.get_by_role("dialog")
            x_axis = dialog.get_by_test_id("experiment-view-compare-runs-config-field").nth(1)
            x_axis.locator(".du-bois-light-select-selector").first.click()
            runs.keyboard.type(latency_metric)
            runs.wait_for_timeout(1000)
            runs.keyboard.press("Enter")
            runs.wait_for_timeout(1500)
            c.shot(runs, "3a-scatter-config", dialog)
            dialog.get_by_test_id("experiment-view-compare-runs-chart-modal-confirm").click()
            search = runs.get_by_placeholder("Search metric charts")
            search.fill(latency_metric)
            runs.wait_for_timeout(3000)
            cards = runs.get_by_test_id("experiment-view-compare-runs-card")
            titles = [t.split("\n")[0] for t in cards.all_inner_texts()]
            c.check("chart view plots accuracy against latency over the trials",
                    any("accuracy" in t and latency_metric in t for t in titles), f"charts: {titles}")
            c.shot(runs, "3-accuracy-vs-latency-chart")

            # 4. The study run: its description, the front as a table and the Pareto plot, inline.
            ml = "?workflowType=machine_learning"
            parent = store["study_run"]
            runs.goto(f"{base}/#/experiments/{experiment_id}/runs/{parent}{ml}")
            runs.get_by_text("on the Pareto front").first.wait_for()
            dismiss_popups(runs)
            c.check("study run shows its description", True)
            c.shot(runs, "4-study-run")
            runs.goto(f"{base}/#/experiments/{experiment_id}/runs/{parent}/artifacts{ml}")
            runs.get_by_text("pareto", exact=True).first.click()
            runs.get_by_text("front_table.json").first.click()
            runs.get_by_text("View as table").first.wait_for()
            runs.wait_for_timeout(2000)
            text = runs.inner_text("body")
            c.check("study run's front table renders as a table", all(t in text for t in store["front_labels"]),
                    f"rows: {sorted(store['front_labels'])}")
            c.shot(runs, "5a-front-table")
            runs.get_by_text("-pareto.png").first.click()
            img = runs.locator("img[src^='blob:']").first
            img.wait_for()
            c.check("study run's Pareto plot renders inline", img.is_visible())
            c.shot(runs, "5-pareto-plot-artifact")

            # 5. The registered model's champion version: description and signature.
            runs.goto(f"{base}/#/models/{MODEL}{ml}")
            runs.get_by_text("champion").first.wait_for()
            c.shot(runs, "6-registered-model")
            runs.goto(f"{base}/#/models/{MODEL}/versions/{store['champion']}{ml}")
            runs.get_by_text("Schema").first.wait_for()
            dismiss_popups(runs)
            schema = runs.get_by_text("Schema").first
            schema.scroll_into_view_if_needed()
            inputs = runs.get_by_text("Inputs (1)").first
            inputs.click()
            runs.wait_for_timeout(1500)
            body = runs.inner_text("body")
            schema = "Tensor (dtype: float32, shape: [1,3,64,64])"  # the Schema table's cell, not the description
            c.check("model version shows its signature", schema in body, f"input: {schema}")
            c.shot(runs, "7-model-version-signature")
        except Exception:
            runs.screenshot(path=str(c.out / "failed-here.png"))
            raise
        browser.close()


def runs_url(base: str, experiment_id: str, chart: bool = False) -> str:
    from nas.export.review import FILTER_FRONT, runs_link

    return f"{base}/{runs_link(experiment_id, FILTER_FRONT, chart)}"


def read_store(workdir: Path) -> dict[str, Any]:
    """What the browser should find, read from the store with MLflow's client."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("nas")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    from nas.export.review import FILTER_FRONT, runs_link

    return {"experiment_id": exp.experiment_id, "latency_metric": "latency_p90_ms",
            "printed_link": runs_link(exp.experiment_id, FILTER_FRONT),
            "front": {r.info.run_name for r in runs if r.data.tags.get("pareto") == "true"},
            "front_labels": {r.data.params.get("reference") or r.data.params["arch_hash"][:8]
                             for r in runs if r.data.tags.get("pareto") == "true"},
            "study_run": next(r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags),
            "champion": client.get_model_version_by_alias(MODEL, "champion").version}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="screenshot folder (default: a new temporary folder)")
    ap.add_argument("--workdir", type=Path, help="search here (default: a temporary folder, removed at the end)")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--no-search", action="store_true", help="check --workdir's store as it is")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise SystemExit("needs Playwright's Python package: .venv/bin/pip install playwright") from None
    if not Path(args.chromium).exists():
        raise SystemExit(f"no Chromium at {args.chromium}: apt-get install -y chromium (or --chromium PATH)")
    out = args.out or Path(tempfile.mkdtemp(prefix="mlflow-ui-check-"))
    out.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlflow-ui-wd-")) / "wd"
    print(f"screenshots: {out}\nworkdir: {workdir}", flush=True)
    if not (args.no_search and args.workdir):
        run_search(workdir, args.trials)
    store = read_store(workdir)
    port = free_port()
    server = start_server(workdir, port)
    checks = Checks(out)
    try:
        drive(f"http://127.0.0.1:{port}", store, args.chromium, checks)
    except Exception as e:  # a page that never showed what was awaited: recorded, with the page as it was
        checks.check("browser session", False, f"{type(e).__name__}: {str(e).splitlines()[0]}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        if args.workdir is None:
            shutil.rmtree(workdir.parent, ignore_errors=True)
    failed = [n for n, ok, _ in checks.results if not ok]
    print(f"{len(checks.results) - len(failed)}/{len(checks.results)} checks passed; screenshots in {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
