"""The Kubernetes manifests in docker/, checked at schema level with PyYAML.

Applying them is not possible here (no cluster, no kubectl, no image registry), so this checks what a reader
would: required fields, resources, probes whose ports are the container's ports, the non-root security context
(fsGroup so the training volume is writable), and that every `rocketctr` command line in them parses with the
CLI's own argparse parser, names files that exist and, for training, a config that validates.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _docs(name: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DOCKER / name).read_text()) if d]
    for d in docs:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(d), (name, d.get("kind"))
        assert d["metadata"].get("name"), (name, d["kind"])
    return {d["kind"]: d for d in docs}


def _image_user() -> tuple[int, int]:
    """USER uid:gid of the project image."""
    m = re.search(r"^USER (\d+):(\d+)\s*$", (DOCKER / "train.Dockerfile").read_text(), re.M)
    assert m, "docker/train.Dockerfile sets no numeric USER uid:gid"
    return int(m.group(1)), int(m.group(2))


def _served_model_name() -> str:
    m = re.search(r'name:\s*"([^"]+)"', (DOCKER / "models.config").read_text())
    assert m
    return m.group(1)


def _check_pod(pod: dict, where: str) -> dict:
    """Common pod checks; returns the only container."""
    containers = pod["containers"]
    assert len(containers) == 1, where
    c = containers[0]
    assert c.get("name") and c.get("image"), where
    res = c.get("resources") or {}
    assert {"cpu", "memory"} <= set(res.get("requests") or {}), f"{where}: requests need cpu and memory"
    assert "memory" in (res.get("limits") or {}), f"{where}: a memory limit is required"
    uid, gid = _image_user()
    sc = pod.get("securityContext") or {}
    assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") == uid and sc.get("runAsGroup") == gid, where
    assert sc.get("fsGroup") == gid, f"{where}: fsGroup must be the image's group so mounted volumes are writable"
    assert (c.get("securityContext") or {}).get("allowPrivilegeEscalation") is False, where
    claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v or "emptyDir" in v}
    assert {m["name"] for m in c.get("volumeMounts", [])} <= claims, where
    return c


def _port(c: dict, ref) -> int:
    """A probe's or Service's port (number or container port name) resolved against the container's ports."""
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if isinstance(ref, str):
        assert ref in ports, f"port name {ref!r} is not a container port ({ports})"
        return ports[ref]
    assert ref in ports.values(), f"port {ref} is not a container port ({ports})"
    return ref


def _parse(tokens: list[str], monkeypatch):
    """Parse a `rocketctr ...` command with the CLI's real parser (which adds only the chosen command's flags,
    from sys.argv)."""
    from rocketctr import cli

    assert tokens[0] == "rocketctr", tokens
    monkeypatch.setattr(sys, "argv", tokens)
    parser = cli.build_parser()
    try:
        return parser.parse_args(tokens[1:])
    except SystemExit:
        pytest.fail(f"the manifest's command does not parse: {shlex.join(tokens)}")


def _shell_command(script: str) -> list[str]:
    """The `exec rocketctr ...` line of a `sh -c` script (continuation lines joined)."""
    joined = script.replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip().startswith("exec rocketctr ")]
    assert len(lines) == 1, script
    return shlex.split(lines[0])[1:]


def test_training_job(monkeypatch):
    docs = _docs("k8s-train-job.yaml")
    job, svc = docs["Job"], docs["Service"]
    assert job["apiVersion"] == "batch/v1" and svc["apiVersion"] == "v1"
    pod = job["spec"]["template"]["spec"]
    c = _check_pod(pod, "train Job")
    assert pod["restartPolicy"] in ("OnFailure", "Never")
    assert job["spec"]["completions"] == job["spec"]["parallelism"] >= 1
    assert c["command"] == ["/bin/sh", "-c"]
    args = _parse(_shell_command(c["args"][0]), monkeypatch)
    assert args.command == "train" and args.quiet and args.resume
    from rocketctr.commands.train import resolve_config

    monkeypatch.chdir(REPO)  # the image's WORKDIR holds the repository's configs/
    cfg = resolve_config(args)  # the command's own config + experiment + --set: a missing one or bad value fails
    assert cfg.train.strategy == "multi_worker_mirrored"
    mounts = [m["mountPath"] for m in c["volumeMounts"]]
    for path in (args.data, args.out):
        assert any(path.startswith(m + "/") for m in mounts), f"{path} is on no mounted volume ({mounts})"
    # TF_CONFIG names one worker per completion index, on the headless Service's port
    workers = re.findall(r"rocketctr-train-(\d+)\.rocketctr-train:(\d+)", c["args"][0])
    assert sorted({int(i) for i, _ in workers}) == list(range(job["spec"]["completions"]))
    assert {int(p) for _, p in workers} == {svc["spec"]["ports"][0]["port"]} == {_port(c, 2222)}
    assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]


def test_serving_deployment(monkeypatch):
    docs = _docs("k8s-serving.yaml")
    dep, svc = docs["Deployment"], docs["Service"]
    assert dep["apiVersion"] == "apps/v1" and svc["apiVersion"] == "v1"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["replicas"] >= 2
    pod = dep["spec"]["template"]["spec"]
    c = _check_pod(pod, "serving Deployment")
    assert c["command"] == ["rocketctr"]
    args = _parse(["rocketctr", *c["args"]], monkeypatch)
    assert args.command == "serve" and args.host == "0.0.0.0"  # reachable from the Service, not only loopback
    assert args.model_name == _served_model_name()  # the name TF Serving's config and the clients use
    assert any(args.model_base.startswith(m["mountPath"] + "/") for m in c["volumeMounts"])
    grpc_port, rest_port = _port(c, "grpc"), _port(c, "http")
    assert (args.port, args.rest_port, args.metrics_port) == (grpc_port, rest_port, _port(c, "metrics"))

    live, ready, start = c["livenessProbe"], c["readinessProbe"], c["startupProbe"]
    assert _port(c, live["grpc"]["port"]) == grpc_port  # grpc.health.v1 Check on the gRPC port
    assert _port(c, start["grpc"]["port"]) == grpc_port
    assert ready["httpGet"]["path"] == f"/v1/models/{args.model_name}"  # TF Serving's model status (REST)
    assert _port(c, ready["httpGet"]["port"]) == rest_port
    for probe in (live, ready, start):
        assert probe.get("periodSeconds", 10) > 0 and probe.get("failureThreshold", 3) >= 1
    assert start["periodSeconds"] * start["failureThreshold"] >= 120  # room for the first model load

    for p in svc["spec"]["ports"]:
        assert _port(c, p["targetPort"]) == p["port"], p
    assert {p["name"] for p in svc["spec"]["ports"]} >= {"grpc", "http"}
