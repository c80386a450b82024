"""cluster.yaml: what `ray up` checks before touching AWS, plus the security rules of docs/cluster.md.

Ray's own path (`ray up` -> `_bootstrap_config`) is `prepare_config` (defaults, docker checks, node-type
min/max) then `validate_config` (ray-schema.json + cross-field rules); both run here offline. The AWS
calls that follow (IAM, subnets, AMI) need an account and are not exercised.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", "*", ""}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict) -> dict:
    """The config exactly as `ray up` holds it after its offline checks."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return cfg


def _all_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    cmds = [c for k in keys for c in cfg.get(k, [])]
    for nt in cfg["available_node_types"].values():
        cmds += nt.get("initialization_commands", []) + nt.get("worker_setup_commands", [])
    return cmds


def _flag_values(cmd: str, flag: str) -> list[str]:
    """Values given to `flag` (`--flag v` or `--flag=v`) in a shell command line."""
    return [m.group(1).strip("'\"") for m in re.finditer(rf"{re.escape(flag)}(?:=|\s+)(\S+)", cmd)]


def test_passes_ray_autoscaler_validation(prepared: dict) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_rejects_a_broken_variant(raw: dict) -> None:
    """The validation above can fail: a typo'd field is refused by Ray's schema."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(raw)
    bad["available_node_types"]["rtl.gpu"]["min_worker"] = 1  # typo of min_workers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_gpu_workers_scale_from_zero_and_head_trains_nothing(prepared: dict) -> None:
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    gpu = [t for name, t in types.items() if name != prepared["head_node_type"]]
    assert len(gpu) == 1
    assert gpu[0]["min_workers"] == 0
    assert gpu[0]["resources"].get("GPU", 0) >= 1 and gpu[0]["resources"].get("CPU", 0) >= 1
    assert 1 <= gpu[0]["max_workers"] <= prepared["max_workers"]
    assert head["resources"].get("CPU") == 0 and head["resources"].get("GPU", 0) == 0
    for t in types.values():  # AWS access from instance profiles, never keys
        assert "Arn" in t["node_config"]["IamInstanceProfile"] or "Name" in t["node_config"]["IamInstanceProfile"]


def test_docker_images_and_gpu_run_options(prepared: dict) -> None:
    d = prepared["docker"]
    assert d["container_name"]
    assert d["worker_image"] and d["head_image"]
    assert "--gpus all" in " ".join(d.get("worker_run_options", []))
    assert "--gpus" not in " ".join(d.get("head_run_options", []) + d.get("run_options", []))


def test_sweeps_are_mounted_from_the_repo(prepared: dict) -> None:
    mounts = prepared["file_mounts"]
    assert any(Path(ROOT, local).resolve() == ROOT / "sweeps" for local in mounts.values())
    assert (ROOT / "sweeps").is_dir()


def test_dashboard_and_mlflow_never_bind_all_interfaces(prepared: dict) -> None:
    head = " ; ".join(prepared["head_start_ray_commands"])
    ray_start = [c for c in prepared["head_start_ray_commands"] if "ray start" in c]
    assert len(ray_start) == 1
    assert _flag_values(ray_start[0], "--dashboard-host") == ["127.0.0.1"]
    mlflow = [c for c in prepared["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1
    hosts = _flag_values(mlflow[0], "--host")
    assert len(hosts) == 1 and hosts[0] not in WILDCARD_HOSTS
    # the host is loopback or the private address computed on the head (`hostname -I`), never public
    assert hosts[0] == "127.0.0.1" or (hosts[0] == "$HEAD_IP" and "HEAD_IP=$(hostname -I" in head)
    assert _flag_values(mlflow[0], "--backend-store-uri")[0].startswith("postgresql://")
    assert _flag_values(mlflow[0], "--artifacts-destination")[0].startswith("s3://")
    for cmd in _all_commands(prepared):
        for flag in ("--dashboard-host", "--host", "--node-ip-address"):
            assert not set(_flag_values(cmd, flag)) & WILDCARD_HOSTS, cmd
        assert not re.search(r"-p\s+5432:|-p\s+0\.0\.0\.0:", cmd), f"database port published publicly: {cmd}"


EFS_MOUNT = re.compile(r"mount -t (nfs4|efs)\b.*\bfs-[0-9a-f]+\.efs\.[a-z0-9-]+\.amazonaws\.com:/ /mnt/efs\b")


def test_every_node_mounts_efs_into_its_container(prepared: dict) -> None:
    """Sweep workspaces are on EFS (sweeps/cluster.yaml: /mnt/efs/rtl): every node type mounts it on the
    host before Docker starts, binds it into the container, and the container setup refuses a node without
    it (a node writing spec.json or the cache where no other node sees it would split the sweep)."""
    for name, t in prepared["available_node_types"].items():
        init = t.get("initialization_commands", prepared["initialization_commands"])
        assert any(EFS_MOUNT.search(c) for c in init), f"{name}: no EFS mount in initialization_commands"
    d = prepared["docker"]
    assert "-v /mnt/efs:/mnt/efs" in d["run_options"]
    assert any("/mnt/efs" in c and "nfs" in c for c in prepared["setup_commands"])
    assert EFS_MOUNT.search("sudo mount -t nfs4 -o x fs-0abc.efs.us-west-2.amazonaws.com:/ /mnt/efs")
    spec = yaml.safe_load((ROOT / "sweeps" / "cluster.yaml").read_text())
    assert spec["workspace"].startswith("/mnt/efs/") and "://" not in spec["workspace"]


def test_every_command_is_valid_shell(prepared: dict) -> None:
    """`bash -n` on every command Ray will run: catches quoting mistakes before a 10-minute `ray up`."""
    for cmd in _all_commands(prepared):
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
        shlex.split(cmd)  # also balanced for tools that tokenise it


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key field": r"(?i)aws_secret_access_key|secret_?access_?key\s*[:=]",
    "AWS session token": r"(?i)aws_session_token",
    "password in a URI": r"://[^/\s:@]+:[^/\s@$]+@",
    # `password=...` / `password: ...` with a literal value (a `$VAR`, `$(cat file)` or path is fine)
    "literal password assignment": r"(?i)(password|passwd)\s*(=|:\s)\s*['\"]?(?![$/~])[A-Za-z0-9+/_-]{6,}",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
}


@pytest.mark.parametrize("rel", ["cluster.yaml", "docker/Dockerfile.gpu", "docker/Dockerfile.cpu",
                                 "docker/README.md", "docs/cluster.md"])
def test_no_credentials_in_cluster_files(rel: str) -> None:
    path = ROOT / rel
    if not path.exists():
        pytest.fail(f"{rel} is missing")
    text = path.read_text()
    for what, pat in SECRET_PATTERNS.items():
        m = re.search(pat, text)
        assert m is None, f"{rel}: {what}: {m.group(0) if m else ''!r}"


def test_secret_scan_catches_a_planted_key() -> None:
    """The scan above is not vacuous: each pattern fires on a typical leak."""
    leaks = {
        "AWS access key id": "aws_access_key_id: AKIAIOSFODNN7EXAMPLE",
        "AWS secret key field": "aws_secret_access_key = abc",
        "AWS session token": "AWS_SESSION_TOKEN=abc",
        "password in a URI": "--backend-store-uri postgresql://mlflow:hunter22@db:5432/mlflow",
        "literal password assignment": "db_password: hunter22secret",
        "private key": "-----BEGIN RSA PRIVATE KEY-----",
    }
    for what, sample in leaks.items():
        assert re.search(SECRET_PATTERNS[what], sample), what
    assert re.search(SECRET_PATTERNS["literal password assignment"], "PGPASSWORD=hunter22secret")
    # and the ways cluster.yaml passes the DB password are not flagged
    for ok in ('export PGPASSWORD="$(cat /run/rtl-secrets/mlflow-db-password)"',
               "-v ~/rtl-secrets/mlflow-db-password:/run/secrets/pg:ro"):
        assert not re.search(SECRET_PATTERNS["literal password assignment"], ok), ok


# ---- docker/ -------------------------------------------------------------------------------------


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


@pytest.mark.parametrize("name,suffix", [("Dockerfile.gpu", "-py311-gpu"), ("Dockerfile.cpu", "-py311")])
def test_images_build_on_the_official_ray_image_of_this_ray_version(name: str, suffix: str) -> None:
    """`ray up`/`ray job submit` need the same Ray on laptop and cluster: the default base image tag is the
    installed Ray version, and Ray is pinned to it inside the image."""
    import ray

    text = _dockerfile(name)
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1) == ray.__version__
    assert re.search(rf"^FROM rayproject/ray:\$\{{RAY_VERSION\}}{re.escape(suffix)}$", text, re.M)
    assert 'echo "ray==${RAY_VERSION}"' in text and "-c constraints.txt" in text
    assert re.search(r"^USER ray$", text, re.M)  # never root at runtime


def test_docker_build_context_has_what_the_dockerfiles_copy() -> None:
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for name in ("Dockerfile.gpu", "Dockerfile.cpu"):
        for line in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", _dockerfile(name), re.M):
            for src in line.split():
                assert (ROOT / src).exists(), f"{name}: COPY {src}: missing"
                assert src not in ignored, f"{name}: COPY {src}: excluded by .dockerignore"
    assert {".git", ".venv"} <= ignored


# ---- the cluster sweep spec fits the cluster -----------------------------------------------------


def _fits(bundle: dict[str, float], resources: dict[str, float]) -> bool:
    return all(v <= resources.get(k, 0) for k, v in bundle.items() if v > 0)


def test_cluster_sweep_trials_fit_on_a_gpu_worker(prepared: dict) -> None:
    """A trial asking for more than one worker offers is never scheduled (the autoscaler only reports it
    as infeasible), so sweeps/cluster.yaml must fit the worker type of cluster.yaml."""
    spec_path = ROOT / "sweeps" / "cluster.yaml"
    if not spec_path.exists():
        pytest.fail("sweeps/cluster.yaml is missing")
    r = yaml.safe_load(spec_path.read_text()).get("resources", {})
    cpus, gpus, train_workers = float(r.get("cpus", 1)), float(r.get("gpus", 0)), int(r.get("train_workers", 1))
    head = prepared["head_node_type"]
    workers = {n: t for n, t in prepared["available_node_types"].items() if n != head}
    trial = {"CPU": cpus, "GPU": gpus}
    fitting = [n for n, t in workers.items() if _fits(trial, t["resources"])]
    assert fitting, f"trial {trial} fits no worker type: {[t['resources'] for t in workers.values()]}"
    if train_workers > 1:  # Ray Train pretraining: train_workers more bundles while the trial holds its own
        bundle = {"CPU": max(1, int(cpus)), "GPU": 1 if gpus > 0 else 0}
        per_node = {n: min(int(t["resources"].get(k, 0) // v) for k, v in bundle.items() if v > 0)
                    for n, t in workers.items()}
        capacity = sum(per_node[n] * workers[n]["max_workers"] for n in workers)
        assert capacity >= train_workers + 1, (
            f"pretraining needs {train_workers} x {bundle} + the trial; the cluster offers {capacity}")


# ---- security group, AMI, GPU check (issue 12, item 7) -------------------------------------------

WORLD = ("0.0.0.0/0", "::/0")


def _recipe(text: str, comment: str = "") -> list[str]:
    """The security-group commands (SSH_CIDR= ... authorize ...) in `text`, comment prefix stripped."""
    lines = [ln.strip()[len(comment):].strip() if comment else ln.strip() for ln in text.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("SSH_CIDR="))
    end = max(i for i, ln in enumerate(lines) if "authorize-security-group-ingress" in ln)
    return lines[start:end + 1]


@pytest.mark.parametrize("rel,comment", [("cluster.yaml", "#"), ("docs/cluster.md", "")])
def test_security_group_recipe_opens_only_ssh_from_the_edit_cidr(rel: str, comment: str) -> None:
    """Two inbound rules: SSH from the one CIDR the user sets (marked EDIT) and all traffic between the
    group's own members. Nothing from 0.0.0.0/0, no other port."""
    cmds = _recipe((ROOT / rel).read_text(), comment)
    assert "EDIT" in cmds[0] and not any(w in cmds[0] for w in WORLD)
    rules = [c for c in cmds if "authorize-security-group-ingress" in c]
    assert len(rules) == 2, rules
    ssh = [r for r in rules if "--cidr" in r]
    assert len(ssh) == 1 and _flag_values(ssh[0], "--port") == ["22"] and _flag_values(ssh[0], "--cidr") == [
        "$SSH_CIDR"], ssh
    intra = [r for r in rules if "--source-group" in r]
    assert len(intra) == 1 and _flag_values(intra[0], "--source-group") == ["$SG"]
    assert not any(w in c for c in cmds for w in WORLD)
    r = subprocess.run(["bash", "-n", "-c", "\n".join(cmds)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_ray_creates_no_security_group(prepared: dict, monkeypatch) -> None:
    """Ray's own group always adds SSH from 0.0.0.0/0; with SecurityGroupIds on every node type its
    `_configure_security_group` (what `ray up` runs) must return without creating or changing a group."""
    from ray.autoscaler._private.aws import config as aws_config

    def forbidden(*a, **k):
        raise AssertionError("ray up would create/modify a security group (with SSH open to the world)")

    monkeypatch.setattr(aws_config, "_upsert_security_groups", forbidden)
    cfg = aws_config._configure_security_group(copy.deepcopy(prepared))
    groups = {tuple(t["node_config"]["SecurityGroupIds"]) for t in cfg["available_node_types"].values()}
    assert len(groups) == 1 and all(re.fullmatch(r"sg-[0-9a-f]{8,17}", g) for g in next(iter(groups)))
    assert "IpPermissions" not in prepared["provider"].get("security_group", {})


def test_ami_is_pinned_and_its_driver_fits_the_image(prepared: dict) -> None:
    """Every node boots one pinned AMI, which Ray keeps (its fallback is an Ubuntu 18.04 DLAMI whose
    driver cannot run the CUDA 13 torch of the image); the driver floor named next to it is the one
    docker/README.md gives for the image's torch build."""
    from ray.autoscaler._private.aws import config as aws_config

    cfg = copy.deepcopy(prepared)
    aws_config._check_ami(cfg)
    amis = {t["node_config"]["ImageId"] for t in cfg["available_node_types"].values()}
    assert len(amis) == 1 and re.fullmatch(r"ami-[0-9a-f]{8,17}", next(iter(amis)))
    assert next(iter(amis)) not in aws_config.DEFAULT_AMI.values()
    floor = {int(x) for x in re.findall(r"driver >= (\d+)", CLUSTER_YAML.read_text())}
    assert floor and floor == {int(x) for x in re.findall(r"driver >= (\d+)", (ROOT / "docker/README.md").read_text())}
    assert "/aws/service/deeplearning/ami/x86_64/" in CLUSTER_YAML.read_text()  # how to re-resolve the pin


def test_gpu_worker_setup_fails_loudly_without_cuda(raw: dict, prepared: dict, tmp_path: Path) -> None:
    """The GPU workers' own set-up commands exit non-zero with a one-line reason when no GPU / no CUDA is
    usable, and pass where torch sees a GPU: run here, on whatever this machine has."""
    import torch

    cmds = raw["worker_setup_commands"]
    assert cmds and not raw["head_setup_commands"]
    assert all(c in prepared["worker_setup_commands"] for c in cmds)  # what Ray runs on workers
    cuda = torch.cuda.is_available()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    results = [subprocess.run(["bash", "-c", c], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
               for c in cmds]
    if cuda:
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    else:
        failed = [r for r in results if r.returncode != 0]
        assert failed, "a GPU worker without CUDA would join the cluster"
        torch_check = next(r for c, r in zip(cmds, results) if "torch.cuda.is_available" in c)
        assert torch_check.returncode != 0 and "CUDA is not available" in torch_check.stderr
        assert "driver >= 580" in torch_check.stderr
