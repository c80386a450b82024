"""Check what the MLflow UI shows for a finished sweep, through the same REST API the page calls.

    .venv/bin/python benchmarks/mlflow_page.py RESULTS_DIR [--port 0] [--screenshot docs/mlflow-runs.png]

Starts `mlflow ui` on 127.0.0.1 over `<RESULTS>/mlflow.db` and asserts: the experiment is of the model
training kind (the UI opens on the runs page, not the GenAI overview); the top level of the runs list
holds the target parent runs (each with the best trial's metrics, a `best_trial` tag and the champion
URI) and one `pretraining` group, no pretraining run; the champion alias resolves. Exit 0 when all hold.

`--screenshot PNG` also opens the runs page in a headless Chromium (a dev tool, not an rtl dependency:
`apt-get install chromium-headless-shell` or `chromium`; `RTL_BROWSER=/path` picks another) driven over
the DevTools protocol: it shows the metric / `best.sources` / `best_trial` columns and one target's trials
(the UI keeps those choices in the browser's localStorage, which a bare `--screenshot` run cannot set),
waits until the page's text holds every target parent and `val_error`, then saves the PNG. No browser:
it says so and exits 3 after the REST checks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(base: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


BROWSERS = ("chromium", "chromium-headless-shell", "headless_shell", "google-chrome", "google-chrome-stable",
            "chrome")
# Columns shown in the screenshot (MLflow's canonical column ids: "<type>.`<key>`").
COLUMNS = ["attributes.`Models`", "metrics.`val_error`", "metrics.`test_error`", "metrics.`test_macro_f1`",
           "metrics.`test_defect_recall`", "params.`best.sources`", "tags.`best_trial`"]


def find_browser() -> str | None:
    """A Chromium-family binary: $RTL_BROWSER, else the first of BROWSERS on PATH."""
    env = os.environ.get("RTL_BROWSER")
    if env:
        return shutil.which(env)
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class _Cdp:
    """The few Chrome DevTools Protocol calls the screenshot needs, over aiohttp's websocket client
    (aiohttp comes with ray[default]; no browser-automation package needed)."""

    def __init__(self, ws) -> None:
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params) -> dict:
        self.n += 1
        mid = self.n
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        while True:  # events arrive interleaved with replies; skip them
            msg = await self.ws.receive_json()
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expr: str):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")

    async def wait(self, expr: str, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not await self.eval(expr):
            if time.monotonic() > end:
                raise TimeoutError(f"page did not show {what} within {timeout:.0f} s")
            await asyncio.sleep(0.25)


async def _shoot(browser: str, base: str, exp_id: str, names: list[str], expand: str | None, out: str,
                 size: tuple[int, int], timeout: float) -> str:
    """Open the experiment's runs page, set the table's columns, screenshot it. Returns the page text."""
    import aiohttp

    w, h = size
    with tempfile.TemporaryDirectory(prefix="rtl-browser-", ignore_cleanup_errors=True) as prof:
        cmd = [browser, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={prof}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
               f"--window-size={w},{h}", "about:blank"]
        if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox on
            cmd.insert(1, "--no-sandbox")
        # own process group: Debian's /usr/bin/chromium* are shell wrappers around the real binary
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file, end = os.path.join(prof, "DevToolsActivePort"), time.monotonic() + timeout
            while not (os.path.exists(port_file) and open(port_file).read().strip()):
                if proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"{browser} did not open its DevTools port (exit {proc.poll()})")
                await asyncio.sleep(0.1)
            port = open(port_file).read().split()[0]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                    page = next(t for t in await r.json() if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    cdp = _Cdp(ws)
                    await cdp.call("Emulation.setDeviceMetricsOverride", width=w, height=h, deviceScaleFactor=1,
                                   mobile=False)
                    await cdp.call("Page.navigate", url=f"{base}/#/experiments/{exp_id}/runs")
                    has_all = " && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in names)
                    await cdp.wait(f"!!document.body && {has_all}", timeout, "the target parent runs")
                    # The runs page keeps its view in localStorage under the experiment ids; set the columns
                    # (and one expanded parent), close the assistant panel, and load the page again.
                    key = f"MLflowLocalStorage-1.1-ExperimentPage-{json.dumps([exp_id])}-ReactComponentState"
                    state = {"selectedColumns": COLUMNS, "runsExpanded": {expand: True} if expand else {}}
                    await cdp.eval(f"""(() => {{
                        const k = {json.dumps(key)};
                        const s = Object.assign(JSON.parse(localStorage.getItem(k) || "{{}}"), {json.dumps(state)});
                        localStorage.setItem(k, JSON.stringify(s));
                        localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
                        localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
                    }})()""")
                    await cdp.call("Page.reload")
                    await cdp.wait(f"!!document.body && {has_all} && document.body.innerText.includes('val_error')"
                                   " && !document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')",
                                   timeout, "the val_error column")
                    prev = None  # settled: the same text twice, 0.5 s apart (metric cells fill in late)
                    while (text := await cdp.eval("document.body.innerText")) != prev:
                        prev = text
                        await asyncio.sleep(0.5)
                    shot = await cdp.call("Page.captureScreenshot", format="png")
            with open(out, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            return text
        finally:
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group `proc` leads (the UI's uvicorn + job workers; the browser's children)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def screenshot(base: str, exp_id: str, targets: list[tuple[dict, dict]], out: str,
               size: tuple[int, int] = (1600, 1000), timeout: float = 60.0) -> list[tuple[str, bool]]:
    """Checks from the rendered page (the PNG at `out` is what a person sees)."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(
            f"no headless browser found (looked for $RTL_BROWSER, {', '.join(BROWSERS)} on PATH); install one "
            "(Debian: apt-get install chromium-headless-shell) to take the screenshot; the REST checks above stand")
    names = [r["info"]["run_name"] for r, _ in targets]
    expand = min(targets, key=lambda t: t[0]["info"]["run_name"])[0]["info"]["run_id"] if targets else None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    text = asyncio.run(_shoot(browser, base, exp_id, names, expand, out, size, timeout))
    return [(f"screenshot {out} ({os.path.getsize(out) // 1024} KB, {os.path.basename(browser)}) shows the runs "
             "table with val_error", "val_error" in text and all(n in text for n in names)),
            ("page is the runs table, not the GenAI overview", "Training runs" in text or "Run Name" in text),
            ("pretraining runs folded under one `pretraining` row", "pretraining" in text and "pretrain:" not in text)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--screenshot", metavar="PNG", help="also save a headless-browser screenshot of the runs page")
    args = ap.parse_args()
    results = os.path.abspath(args.results)
    spec = json.load(open(os.path.join(results, "spec.json")))
    port = args.port or _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                             f"sqlite:///{results}/mlflow.db", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        else:
            print("mlflow ui did not come up", file=sys.stderr)
            return 1
        exp = _call(base, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={spec['name']}")["experiment"]
        tags = {t["key"]: t["value"] for t in exp.get("tags", [])}
        checks = [("experiment kind is model training", tags.get("mlflow.experimentKind") == "custom_model_development")]
        top = _call(base, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [exp["experiment_id"]], "filter": "tags.`mlflow.parentRunId` IS NULL",
            "max_results": 1000}).get("runs", [])
        kinds = {}
        for r in top:
            rt = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
            kinds.setdefault(rt.get("rtl.kind"), []).append((r, rt))
        targets = kinds.get("target", [])
        checks += [
            ("no pretraining run at the top level", "pretrain" not in kinds),
            ("one target parent per target", len(targets) == len(spec["targets"])),
            ("target parents carry val_error, best_trial, champion",
             all(any(m["key"] == "val_error" for m in r["data"].get("metrics", [])) and "best_trial" in rt
                 and "rtl.champion" in rt for r, rt in targets)),
        ]
        for _, rt in targets:
            name = rt["rtl.champion"][len("models:/"):].split("@")[0]
            mv = _call(base, f"/api/2.0/mlflow/registered-models/alias?name={name}&alias=champion")
            checks.append((f"{name}@champion resolves", bool(mv.get("model_version", {}).get("version"))))
        no_browser = None
        if args.screenshot:
            try:
                checks += screenshot(base, exp["experiment_id"], targets, args.screenshot)
            except FileNotFoundError as e:
                no_browser = str(e)
            except (RuntimeError, TimeoutError, OSError) as e:
                checks.append((f"screenshot: {e}", False))
        for what, ok in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {what}")
        print(f"top level: {', '.join(f'{k} x{len(v)}' for k, v in kinds.items())}; UI: {base}")
        if not all(ok for _, ok in checks):
            return 1
        if no_browser:
            print(f"NO SCREENSHOT: {no_browser}", file=sys.stderr)
            return 3
        return 0
    finally:  # the UI forks uvicorn + job workers: stop its whole process group
        _stop_group(proc)


if __name__ == "__main__":
    sys.exit(main())
