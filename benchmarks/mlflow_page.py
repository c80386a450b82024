"""Check what the MLflow UI shows for a finished sweep, through the same REST API the page calls.

    .venv/bin/python benchmarks/mlflow_page.py RESULTS_DIR [--port 0]

Starts `mlflow ui` on 127.0.0.1 over `<RESULTS>/mlflow.db` and asserts: the experiment is of the model
training kind (the UI opens on the runs page, not the GenAI overview); the top level of the runs list
holds the target parent runs (each with the best trial's metrics, a `best_trial` tag and the champion
URI) and one `pretraining` group, no pretraining run; the champion alias resolves. Exit 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--port", type=int, default=0)
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
        for what, ok in checks:
            print(f"{'ok  ' if ok else 'FAIL'} {what}")
        print(f"top level: {', '.join(f'{k} x{len(v)}' for k, v in kinds.items())}; UI: {base}")
        return 0 if all(ok for _, ok in checks) else 1
    finally:  # the UI forks uvicorn + job workers: stop its whole process group
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
