#!/usr/bin/env python3
"""Checks what schema validation cannot see in the kustomize base: that the objects refer to
each other correctly and agree with the sockgate config in the ConfigMap.

    python3 deploy/kubernetes/crossref.py deploy/kubernetes

Exits 1 with one line per problem. Needs PyYAML (yamllint brings it) and Python 3.11+
(tomllib).
"""

import pathlib
import re
import sys
import tomllib

import yaml

problems = []


def expect(ok, message):
    if not ok:
        problems.append(message)


def seconds(duration):
    """A sockgate duration such as "30s", "1m30s", "250ms" in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    expect(parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def subset(small, big):
    return all(big.get(k) == v for k, v in (small or {}).items())


base = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "deploy/kubernetes")
kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
listed = set(kustomization["resources"])
present = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
expect(listed == present, f"kustomization resources {sorted(listed)} differ from the files {sorted(present)}")

objects = {}
for name in sorted(listed & present):
    for doc in yaml.safe_load_all((base / name).read_text()):
        if doc:
            objects[(doc["kind"], doc["metadata"]["name"])] = doc


def one(kind):
    found = [o for (k, _), o in objects.items() if k == kind]
    expect(len(found) >= 1, f"no {kind}")
    return found


deployment = one("Deployment")[0]
pod = deployment["spec"]["template"]
pod_labels = pod["metadata"]["labels"]
container = pod["spec"]["containers"][0]
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
expect(subset(deployment["spec"]["selector"]["matchLabels"], pod_labels), "Deployment selector does not match its pods")

# The config the pod runs, and where it is mounted.
configmap = objects[("ConfigMap", "sockgate-config")]
config = tomllib.loads(configmap["data"]["sockgate.toml"])
args = container["args"]
config_path = pathlib.PurePosixPath(args[args.index("--config") + 1])
mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
expect(volumes["config"]["configMap"]["name"] == "sockgate-config", "config volume is not the ConfigMap")
expect(str(config_path.parent) == mounts["config"], f"--config {config_path} is not in the ConfigMap mount {mounts['config']}")
expect(config_path.name in configmap["data"], f"the ConfigMap has no {config_path.name}")
secret_name = volumes["tls"]["secret"]["secretName"]
secret = objects.get(("Secret", secret_name))
expect(secret is not None, f"no Secret {secret_name}")
for listener in config["listener"]:
    tls = listener.get("tls")
    if tls:
        for key in ("cert", "key"):
            path = config_path.parent / tls[key]
            # Resolve "..": /etc/sockgate/config/../tls/tls.crt -> /etc/sockgate/tls/tls.crt
            parts = []
            for part in path.parts:
                if part == "..":
                    parts.pop()
                else:
                    parts.append(part)
            resolved = pathlib.PurePosixPath(*parts)
            expect(str(resolved.parent) == mounts["tls"], f"{tls[key]} is not in the Secret mount {mounts['tls']}")
            expect(resolved.name in (secret or {}).get("stringData", {}) | (secret or {}).get("data", {}),
                   f"the Secret has no {resolved.name}")

admin_port = int(config["admin"]["listen"].rsplit(":", 1)[1])
expect(ports.get("admin") == admin_port, f"container port admin {ports.get('admin')} is not the admin listen port {admin_port}")
listen_ports = {int(l["listen"].rsplit(":", 1)[1]) for l in config["listener"]}
expect(ports.get("edge") in listen_ports, f"container port edge {ports.get('edge')} is no listener's port {listen_ports}")

# Probes and shutdown.
readiness, liveness = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
expect(readiness == {"path": "/readyz", "port": "admin"}, f"readiness probe {readiness}")
expect(liveness == {"path": "/healthz", "port": "admin"}, f"liveness probe {liveness}")
pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
drain = seconds(config.get("defaults", {}).get("drain_timeout", "30s"))
grace = pod["spec"]["terminationGracePeriodSeconds"]
expect(grace > pre_stop + drain, f"terminationGracePeriodSeconds {grace} is not above preStop {pre_stop}s + drain_timeout {drain}s")

# Services, the PodDisruptionBudget and the ServiceMonitor.
services = {name: o for (kind, name), o in objects.items() if kind == "Service"}
for name, service in services.items():
    expect(subset(service["spec"]["selector"], pod_labels), f"Service {name} selects no sockgate pod")
    for port in service["spec"]["ports"]:
        expect(port["targetPort"] in ports, f"Service {name} targets unknown port {port['targetPort']}")
        expect(port.get("protocol", "TCP") == "TCP", f"Service {name} port {port['name']} is not TCP")
for pdb in one("PodDisruptionBudget"):
    expect(subset(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PodDisruptionBudget selects no sockgate pod")
for monitor in one("ServiceMonitor"):
    wanted = monitor["spec"]["selector"]["matchLabels"]
    matched = [s for s in services.values() if subset(wanted, s["metadata"].get("labels", {}))]
    expect(len(matched) == 1, f"ServiceMonitor selects {len(matched)} Services, not 1")
    for endpoint in monitor["spec"]["endpoints"]:
        expect(any(p["name"] == endpoint["port"] for s in matched for p in s["spec"]["ports"]),
               f"ServiceMonitor port {endpoint['port']} is not on the Service")
        expect(endpoint.get("path") == "/metrics", "ServiceMonitor path is not /metrics")

# The autoscaler and the adapter rule that serves its metric.
adapter = yaml.safe_load((base / "prometheus-adapter" / "adapter-config.yaml").read_text())
served = {r["name"]["as"] for r in yaml.safe_load(adapter["data"]["config.yaml"])["rules"]}
for hpa in one("HorizontalPodAutoscaler"):
    ref = hpa["spec"]["scaleTargetRef"]
    expect((ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"]), f"HPA scales {ref}")
    for metric in hpa["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        expect(name in served, f"HPA metric {name} is not served by the adapter rule ({served})")
        target = int(metric["pods"]["target"]["averageValue"])
        limit = config.get("defaults", {}).get("max_connections")
        expect(limit is None or target < limit, f"HPA target {target} is not below max_connections {limit}")

for problem in problems:
    print(f"crossref: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"crossref: {len(objects)} objects agree with each other and with the ConfigMap's config")
