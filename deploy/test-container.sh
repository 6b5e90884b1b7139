#!/usr/bin/env bash
# Builds the seqserve image with podman (no Docker engine needed), runs it with models from a volume,
# checks readiness, a classification, a translation, the image HEALTHCHECK, the non-root user and the
# absence of torch, then stops it with SIGTERM and expects a clean exit. `make test-container` runs it.
#
# Without access to a container registry the Dockerfile's base image (python:3.11-slim) cannot be pulled;
# the script then builds a stand-in from Debian bookworm (whose python3 is 3.11) with debootstrap and
# passes it as the PYTHON_IMAGE build argument.
#
# Options (environment): PORT (default 18000), WORK (default /var/tmp/seqserve-container),
# COMPOSE=1 to also bring up seqserve + Prometheus with podman-compose (on compose's ports 8000 and 9090).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${PORT:-18000}
WORK=${WORK:-/var/tmp/seqserve-container}
BASE_IMAGE=localhost/seqserve-python:3.11-bookworm
IMAGE=localhost/seqserve:test
CONTAINER=seqserve-test-$$
VENV_BIN=$ROOT/.venv/bin

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

install_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [[ ${COMPOSE:-0} == 1 ]]; then
        command -v podman-compose >/dev/null || missing+=(podman-compose)
        [[ -x /usr/lib/cni/dnsname ]] || missing+=(golang-github-containernetworking-plugin-dnsname)
    fi
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

mkdir -p "$WORK"
# containers.conf: no default ulimits (this sandbox refuses to raise them) and runc with cgroupfs.
export CONTAINERS_CONF=$WORK/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
PODMAN=(podman --runtime runc --storage-driver vfs --cgroup-manager cgroupfs)

build_base_image() {
    if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE already built"
        return
    fi
    log "trying to pull python:3.11-slim"
    if timeout 120 "${PODMAN[@]}" pull docker.io/library/python:3.11-slim; then
        "${PODMAN[@]}" tag docker.io/library/python:3.11-slim "$BASE_IMAGE"
        return
    fi
    log "no registry: building $BASE_IMAGE with debootstrap (Debian bookworm, python3 3.11)"
    local rootfs=$WORK/rootfs
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
        bookworm "$rootfs" http://deb.debian.org/debian
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE"
    rm -rf "$rootfs"
}

build_image() {
    log "building $IMAGE from Dockerfile"
    # pip in the build trusts the CA bundle this machine's pip configuration names (its `cert`), mounted for the
    # RUN steps rather than copied into a layer; the host's extra indexes (file:// folders) do not exist in the
    # container, so pip uses PyPI.
    local ca
    ca=$("$VENV_BIN/pip" config list 2>/dev/null | sed -n "s/^[^.]*\.cert='\(.*\)'$/\1/p" | head -n 1)
    [[ -n $ca && -f $ca ]] || ca=/etc/ssl/certs/ca-certificates.crt
    log "pip in the build trusts $ca"
    "${PODMAN[@]}" build --pull=never --network host --format docker \
        --volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt \
        --build-arg PYTHON_IMAGE="$BASE_IMAGE" -t "$IMAGE" -f Dockerfile .
    "${PODMAN[@]}" image prune -f >/dev/null  # the previous build's image, now untagged (vfs stores full copies)
}

make_models() {
    # Tiny models trained in seconds with the project's own CLI, served from a volume (/models).
    local models=$WORK/models
    if [[ -f $models/reviews/1/config.json && -f $models/numbers/1/config.json ]]; then
        echo "$models"
        return
    fi
    [[ -x $VENV_BIN/seqserve ]] || fail "no $VENV_BIN/seqserve: run 'make setup' first (training needs the train extra)"
    rm -rf "$models" "$WORK/data" "$WORK/runs"
    mkdir -p "$WORK/data"
    "$VENV_BIN/python" - "$WORK/data" <<'EOF' >&2
import csv, random, sys
out = sys.argv[1]
rng = random.Random(0)
good, bad = ["great", "superb", "moving", "charming"], ["dull", "awful", "boring", "tedious"]
filler = ["the", "film", "is", "a", "story", "with", "cast", "and", "plot"]
with open(f"{out}/reviews.csv", "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(["text", "label"])
    for i in range(400):
        words = rng.choices(filler, k=rng.randint(3, 8)) + [rng.choice(good if i % 2 else bad)]
        rng.shuffle(words)
        w.writerow([" ".join(words), "pos" if i % 2 else "neg"])
de = dict(zip("zero one two three four five six seven eight nine".split(),
              "null eins zwei drei vier fünf sechs sieben acht neun".split()))
with open(f"{out}/numbers.tsv", "w") as fh:
    fh.write("source\ttarget\n")
    for _ in range(1500):
        src = rng.choices(list(de), k=rng.randint(2, 5))
        fh.write(" ".join(src) + "\t" + " ".join(de[w] for w in src) + "\n")
EOF
    OMP_NUM_THREADS=1 "$VENV_BIN/seqserve" train classifier --data "$WORK/data/reviews.csv" --out "$models/reviews" \
        --version 1 --work-dir "$WORK/runs/reviews" --epochs 4 --lr 0.01 --emb-dim 16 --hidden 16 --vocab-size 300 >&2
    OMP_NUM_THREADS=1 "$VENV_BIN/seqserve" train translator --data "$WORK/data/numbers.tsv" --src-field source \
        --tgt-field target --out "$models/numbers" --version 1 --work-dir "$WORK/runs/numbers" --epochs 6 --lr 0.01 \
        --emb-dim 32 --hidden 32 --dec-hidden 64 --vocab-size 300 >&2
    chmod -R a+rX "$models"
    echo "$models"
}

wait_ready() {
    local url=$1 tries=${2:-120}
    for ((i = 0; i < tries; i++)); do
        if curl -fsS "$url/v2/health/ready" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    return 1
}

stop_container() {
    "${PODMAN[@]}" rm -f -t 1 "$CONTAINER" >/dev/null 2>&1 || true
}

run_image() {
    local models=$1 url=http://127.0.0.1:$PORT
    log "running $IMAGE on 127.0.0.1:$PORT (host network), models from a volume"
    trap stop_container EXIT
    "${PODMAN[@]}" run -d --name "$CONTAINER" --network host -v "$models:/models:ro" \
        -e SEQSERVE_PORT="$PORT" -e SEQSERVE_DRAIN_TIMEOUT_S=5 -e SEQSERVE_INTRA_OP_THREADS=1 "$IMAGE"
    if ! wait_ready "$url"; then
        "${PODMAN[@]}" logs "$CONTAINER" | tail -40
        fail "$url/v2/health/ready never answered 200"
    fi
    echo "ready: $(curl -fsS "$url/v2/health/ready")"
    echo "classify: $(curl -fsS -H 'Content-Type: application/json' \
        -d '{"model": "reviews", "texts": ["a great film", "a dull plot"]}' "$url/v1/classify")"
    echo "translate: $(curl -fsS -H 'Content-Type: application/json' \
        -d '{"model": "numbers", "texts": ["two five nine"], "beam_size": 1}' "$url/v1/translate")"
    curl -fsS "$url/" | grep -q '<title>seqserve demo</title>' || fail "the demo page is not served at /"
    echo "demo page: served at /"
    curl -fsS "$url/metrics" | grep -q '^seqserve_requests_total{endpoint="/v1/classify"' \
        || fail "/metrics lacks seqserve_requests_total for /v1/classify"
    echo "metrics: seqserve_requests_total present"

    "${PODMAN[@]}" healthcheck run "$CONTAINER" || fail "the image HEALTHCHECK failed"
    echo "healthcheck: $("${PODMAN[@]}" inspect --format '{{.State.Health.Status}}' "$CONTAINER" 2>/dev/null || echo ran)"
    local uid
    uid=$("${PODMAN[@]}" exec "$CONTAINER" id -u)
    [[ $uid != 0 ]] || fail "the container runs as root"
    echo "user: uid $uid"
    if "${PODMAN[@]}" exec "$CONTAINER" python3 -c 'import torch' 2>/dev/null; then fail "torch is in the image"; fi
    echo "torch: absent"
    echo "image size: $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
    local baked expected
    baked=$("${PODMAN[@]}" run --rm "$IMAGE" ls /models | xargs)
    expected=$(find model_repository -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | xargs)
    [[ $baked == "$expected" ]] || fail "baked-in /models has '$baked', model_repository has '$expected'"
    echo "baked-in models: ${baked:-none}"

    log "stopping with SIGTERM (graceful drain)"
    "${PODMAN[@]}" stop -t 30 "$CONTAINER" >/dev/null
    local code
    code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$CONTAINER")
    "${PODMAN[@]}" logs "$CONTAINER" 2>&1 | tail -5
    [[ $code == 0 ]] || fail "the container exited $code after SIGTERM (expected 0)"
    echo "stopped: exit code 0"
    stop_container
    trap - EXIT
}

compose_up() {
    # seqserve + Prometheus from docker-compose.yml with podman-compose, on compose's own network and ports;
    # the override swaps in images built here (no registry) and the tiny models.
    local models=$1 url=http://127.0.0.1:8000 prometheus=http://127.0.0.1:9090
    log "podman-compose: seqserve + prometheus"
    if curl -s -o /dev/null "$url" || curl -s -o /dev/null "$prometheus"; then
        fail "port 8000 or 9090 is in use; the compose check publishes both"
    fi
    "${PODMAN[@]}" image exists localhost/prometheus-debian:bookworm || "${PODMAN[@]}" build --pull=never \
        --network host --format docker --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -t localhost/prometheus-debian:bookworm -f deploy/podman/Containerfile.prometheus deploy/podman
    COMPOSE_CMD=(podman-compose --podman-args="--runtime runc --storage-driver vfs --cgroup-manager cgroupfs"
                 -p seqserve-test -f docker-compose.yml -f deploy/podman/compose.override.yml)
    export SEQSERVE_TEST_IMAGE=$IMAGE SEQSERVE_TEST_MODELS=$models
    # A network left from a run before the dnsname plugin was installed would resolve no service names.
    "${PODMAN[@]}" network rm seqserve-test_default >/dev/null 2>&1 || true
    trap compose_down EXIT
    "${COMPOSE_CMD[@]}" up -d seqserve prometheus
    if ! wait_ready "$url"; then
        "${PODMAN[@]}" logs seqserve-test_seqserve_1 2>&1 | tail -20
        fail "seqserve under podman-compose never became ready"
    fi
    for _ in 1 2 3 4 5; do
        curl -fsS -H 'Content-Type: application/json' -d '{"model": "reviews", "texts": ["great"]}' \
            "$url/v1/classify" >/dev/null
    done
    # Prometheus scrapes seqserve:8000 by its compose service name, every 5 s.
    local query='sum(seqserve_requests_total{job="seqserve", endpoint="/v1/classify"})' answer=""
    for ((i = 0; i < 90; i++)); do
        answer=$(curl -fsS --get --data-urlencode "query=$query" "$prometheus/api/v1/query" 2>/dev/null || true)
        if grep -q '"5"' <<<"$answer"; then break; fi
        sleep 1
    done
    echo "prometheus: $query -> $answer"
    if ! grep -q '"5"' <<<"$answer"; then
        "${PODMAN[@]}" logs seqserve-test_prometheus_1 2>&1 | tail -20
        fail "Prometheus under podman-compose did not see the 5 requests"
    fi
    curl -fsS "$prometheus/api/v1/rules" | grep -q SeqserveHighErrorRate \
        || fail "Prometheus under podman-compose did not load alerts.yml"
    echo "prometheus: alert rules loaded"
    compose_down
    trap - EXIT
}

compose_down() {
    # The containers, then the volume and network compose made: a run leaves nothing behind.
    "${COMPOSE_CMD[@]}" down -v -t 10 >/dev/null 2>&1 || true
    "${PODMAN[@]}" volume rm -f seqserve-test_prometheus-data >/dev/null 2>&1 || true
    "${PODMAN[@]}" network rm seqserve-test_default >/dev/null 2>&1 || true
}

install_tools
build_base_image
build_image
MODELS=$(make_models)
run_image "$MODELS"
if [[ ${COMPOSE:-0} == 1 ]]; then compose_up "$MODELS"; fi
log "container test passed"
