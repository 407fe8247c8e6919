#!/usr/bin/env bash
# Builds deploy/Containerfile's runtime image with podman and runs it until its HEALTHCHECK
# passes, on a machine that reaches no container registry (deploy/check.sh calls this):
#
#   - the registry base images are replaced by local stand-ins built FROM scratch:
#     RUNTIME_IMAGE (distroless cc-debian12:nonroot): this host's glibc and libgcc files that
#     the binary links (Debian 12, as in distroless), /etc/passwd with nonroot (65532), /tmp;
#     BUSYBOX_IMAGE (busybox:musl): Debian's busybox-static at /bin/busybox;
#   - the target is `prebuilt`: the binary given here, copied from a build context that holds
#     only it (at target/release/sockgate, the default path). It shares every runtime setting (base, busybox, user, ports, HEALTHCHECK,
#     entrypoint) with the default `runtime` target through `runtime-base`; only the binary's
#     origin differs. The Rust build stage is not used by it, so podman skips it and needs no
#     Rust image.
# Then the image runs with the ConfigMap's config and a dev certificate mounted as in the
# Kubernetes Deployment, network "none"; the HEALTHCHECK (busybox wget /healthz) must pass,
# /readyz must answer 200, the process must run as 65532, and SIGTERM (podman stop) must end
# it with exit status 0 (a drain with no connections).
#
#   deploy/container/check-image.sh target/debug/sockgate
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="$(realpath "${1:?usage: check-image.sh PATH-TO-SOCKGATE-BINARY}")"
[ -x "$bin" ] || { echo "check-image.sh: $bin is not an executable" >&2; exit 1; }

if ! command -v podman >/dev/null; then
    echo "check-image.sh: SKIPPED: podman is not installed (Debian package podman)" >&2
    exit 0
fi

# runc and cgroupfs: crun refuses a cgroup v1/v2 hybrid host, and there may be no systemd.
podman=(podman --runtime "$(command -v runc || echo runc)" --cgroup-manager cgroupfs)
tag="localhost/sockgate-check"
name="sockgate-check-$$"
work="$(mktemp -d)"
cleanup() {
    "${podman[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
    "${podman[@]}" rmi -f "$tag/sockgate:test" "$tag/runtime:test" "$tag/busybox:test" \
        >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# Stand-in for gcr.io/distroless/cc-debian12:nonroot.
mkdir -p "$work/runtime/rootfs/etc" "$work/runtime/rootfs/tmp" "$work/runtime/rootfs/home/nonroot"
chmod 1777 "$work/runtime/rootfs/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$work/runtime/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/runtime/rootfs/etc/group"
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$work/runtime/rootfs$(dirname "$lib")"
    cp -L "$lib" "$work/runtime/rootfs$lib"
done
# ld.so looks in /lib64 and the multiarch folder; the symlinks Debian has.
if [ -d /lib64 ] && [ ! -e "$work/runtime/rootfs/lib64" ]; then
    mkdir -p "$work/runtime/rootfs/lib64"
    cp -L /lib64/ld-linux-* "$work/runtime/rootfs/lib64/" 2>/dev/null || true
fi
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$work/runtime/Containerfile"

# Stand-in for docker.io/library/busybox:1.37-musl.
mkdir -p "$work/busybox"
cp /bin/busybox "$work/busybox/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\n' >"$work/busybox/Containerfile"

for image in runtime busybox; do
    "${podman[@]}" build -q --isolation chroot -t "$tag/$image:test" "$work/$image" >/dev/null
done

# Where --target prebuilt looks by default (and what Containerfile.dockerignore lets through).
mkdir -p "$work/context/target/release"
cp "$bin" "$work/context/target/release/sockgate"
echo "check-image.sh: podman build -f deploy/Containerfile --target prebuilt (local stand-ins)"
"${podman[@]}" build --isolation chroot --format docker --pull=never --target prebuilt \
    --build-arg RUNTIME_IMAGE="$tag/runtime:test" \
    --build-arg BUSYBOX_IMAGE="$tag/busybox:test" \
    -f "$root/deploy/Containerfile" -t "$tag/sockgate:test" "$work/context"
user="$("${podman[@]}" image inspect --format '{{.Config.User}}' "$tag/sockgate:test")"
[ "$user" = "65532:65532" ] || { echo "check-image.sh: image user is '$user', not 65532:65532" >&2; exit 1; }
size="$("${podman[@]}" image inspect --format '{{.Size}}' "$tag/sockgate:test")"
echo "check-image.sh: image built, user $user, $((size / 1024 / 1024)) MiB (binary $(($(stat -c %s "$bin") / 1024 / 1024)) MiB)"

# The pod's layout: config from the ConfigMap, the Secret's tls.crt and tls.key.
mkdir -p "$work/config" "$work/tls" "$work/certs"
python3 - "$root/deploy/kubernetes/configmap.yaml" "$work/config/sockgate.toml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
open(sys.argv[2], "w").write(doc["data"]["sockgate.toml"])
PY
"$bin" cert dev --out "$work/certs" >/dev/null
cp "$work/certs/server.crt" "$work/tls/tls.crt"
cp "$work/certs/server.key" "$work/tls/tls.key"
chmod -R a+rX "$work/config" "$work/tls"

nofile="$(ulimit -Hn)"
if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then
    nofile=65536
fi
limits=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
# Whether this machine can run a container at all, with the stand-in busybox alone: if not,
# the image was still built and linted, and the run is reported as skipped, not failed.
if ! "${podman[@]}" run --rm --network none "${limits[@]}" "$tag/busybox:test" /bin/busybox true \
    >"$work/probe.log" 2>&1; then
    echo "check-image.sh: SKIPPED the run: this machine cannot run containers:" >&2
    grep -v 'level=error' "$work/probe.log" >&2 || true
    exit 0
fi
"${podman[@]}" run -d --name "$name" --network none \
    "${limits[@]}" \
    -v "$work/config:/etc/sockgate/config:ro" -v "$work/tls:/etc/sockgate/tls:ro" \
    "$tag/sockgate:test" >/dev/null 2>"$work/run.log" || {
    cat "$work/run.log" >&2
    exit 1
}

healthy=0
for _ in $(seq 1 60); do
    if "${podman[@]}" healthcheck run "$name" >"$work/health.log" 2>&1; then
        healthy=1
        break
    fi
    sleep 0.5
done
if [ "$healthy" != 1 ]; then
    echo "check-image.sh: the HEALTHCHECK never passed:" >&2
    grep -v 'level=error msg="Removing timer' "$work/health.log" >&2 || true
    echo "check-image.sh: container log:" >&2
    "${podman[@]}" logs "$name" >&2 || true
    exit 1
fi
echo "check-image.sh: HEALTHCHECK passed (busybox wget http://127.0.0.1:9901/healthz)"
ready="$("${podman[@]}" exec "$name" /usr/local/bin/busybox wget -q -S -O /dev/null \
    http://127.0.0.1:9901/readyz 2>&1 | head -1)"
case "$ready" in
    *" 200 "*) echo "check-image.sh: /readyz: $ready" ;;
    *) echo "check-image.sh: /readyz answered '$ready'" >&2; exit 1 ;;
esac
uid="$("${podman[@]}" exec "$name" /usr/local/bin/busybox id -u)"
[ "$uid" = 65532 ] || { echo "check-image.sh: runs as uid $uid" >&2; exit 1; }

# Without systemd podman cannot schedule the HEALTHCHECK timer and says so on stderr; the
# checks above run it by hand, so that message is left out.
"${podman[@]}" stop -t 40 "$name" >/dev/null 2>"$work/stop.log" || {
    cat "$work/stop.log" >&2
    exit 1
}
status="$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$name")"
if [ "$status" != 0 ]; then
    echo "check-image.sh: exit status $status after SIGTERM; container log:" >&2
    "${podman[@]}" logs "$name" >&2 || true
    exit 1
fi
echo "check-image.sh: runs as uid 65532, SIGTERM drained and exited 0"
