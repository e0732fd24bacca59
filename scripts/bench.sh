#!/usr/bin/env bash
# publishd side by side with what a user would pick instead, in ONE run on
# the private engine and registries of scripts/test-env.sh (issue 10):
#
#   A_engine    publishd, N targets of one small image in jobs of 4 tags,
#               --workers 4, all through the engine (--publish-via engine
#               where the binary has it); first submit to last job finished
#   A_auto      the same with --publish-via auto (registry-side publishing)
#   A_auto_26   A_auto on dockerd 26 with the containerd image store
#   A_fresh     the typical pipeline: N targets in jobs of one fresh image
#               each (its own 256 KB layer, not in the registry) x 4 tags,
#               --workers 4, --publish-via auto; A_fresh_26 on dockerd 26
#   D4_fresh    skopeo copy, 4 at once, over the same images and tags;
#               D4_fresh_26 from dockerd 26 (docker save + skopeo copy
#               docker-archive:, since skopeo 1.9 speaks too old an API)
#   A_registry  the same from a docker://REGISTRY/REPO@sha256:... source,
#               publishd run with --docker-host none
#   A_index     the same from a two-platform index as BuildKit pushes it
#               (linux/amd64 and linux/arm64, each with its provenance
#               attestation), written into the registry by this script:
#               each target is two labelled platform manifests and configs,
#               the two attestations carried, and a new index
#               (A_auto and A_registry: "n/a (not implemented)" for a
#               binary without them: `serve --help` names --publish-via, and
#               a docker:// source is not refused with a 422)
#   B_load      the engine's floor: config-only load of the labelled image,
#               push, delete, straight to the Engine API in 4 lanes
#               (testkit/src/bin/engine-floor.rs)
#   C           docker tag / docker push / docker rmi in a shell loop
#   D, D4       skopeo copy docker-daemon:IMG docker://REG/..., one at a
#               time, and 4 at once
#   E           a 60 MB image of 3 fresh random layers, first push:
#               publishd vs docker push
#   F           the API under load from wrk, workers kept idle: POST and GET
#               of jobs, requests/s, p50/p99, service RSS before and after
#   G           a database of 1,000,000 finished jobs (10 submitters, 100
#               repositories, 2% failed): every list filter's p50/p99 (p99
#               < 20 ms on SQLite, < 40 ms on PostgreSQL), get p99, start-up
#               time (process start to /healthz), RSS
#   H           the N targets of A_engine again, all up to date
#
# It prints a table with each row's ratio to its baseline and the issue's
# target for it (met or missed), and with --json FILE writes the same as JSON.
#
#   scripts/bench.sh [--n N] [--quick] [--json FILE] [--profile release|debug]
#                    [--api-only] [--store sqlite|postgres]
#   scripts/bench.sh install      install what it needs (scripts/test-env.sh install)
#
# --api-only: only the API rows, F and G. --store postgres: the service keeps
# its jobs in a database of its own on the test environment's PostgreSQL
# (G's jobs are written there with psql) instead of a SQLite file.
#
# --quick: N=20, short wrk runs, 10,000 jobs for G, a 6 MB image for E and
# the debug binaries (what the test script builds); it is the configuration
# scripts/test-isolated.sh runs so that this script cannot rot. The full run
# builds and uses the release binaries. Outside the test namespace the script
# installs what is missing, builds, and re-runs itself inside a fresh one
# (scripts/test-ns.sh) with its own engines and registries; inside one whose
# test environment is up already (PUBLISHD_TEST_ENV_DIR, as in
# test-isolated.sh) it uses that environment. It exits non-zero when a
# measurement breaks (a target fails, a tool errs), never for a missed target.
set -euo pipefail
cd "$(dirname "$0")/.."

# skopeo, wrk and sqlite3 are among the test environment's packages.
if [ "${1:-}" = install ]; then
  exec scripts/test-env.sh install
fi

n='' quick=0 json_out='' profile='' api_only=0 store=sqlite
while (($#)); do
  case $1 in
    --api-only) api_only=1; shift ;;
    --store) store=$2; shift 2 ;;
    --n) n=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --json) json_out=$(realpath -m "$2"); shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if ((quick)); then
  : "${n:=20}" "${profile:=debug}"
  wrk_secs=1 wrk_conns=8 g_jobs=10000 e_layer_mb=2 e_rounds=1
else
  : "${n:=200}" "${profile:=release}"
  wrk_secs=10 wrk_conns=32 g_jobs=1000000 e_layer_mb=20 e_rounds=2
fi
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --n wants a positive number" >&2; exit 2; }
case $profile in release | debug) ;; *) echo "bench.sh: --profile release|debug" >&2; exit 2 ;; esac
case $store in sqlite | postgres) ;; *) echo "bench.sh: --store sqlite|postgres" >&2; exit 2 ;; esac

if [ -z "${PUBLISHD_TEST_NS:-}" ]; then
  scripts/test-env.sh install
  if [ "$profile" = release ]; then
    cargo build --release --locked --workspace --bins
  else
    cargo build --locked --workspace --bins
  fi
  # --json made absolute above: pass the parsed arguments on.
  rerun=(--n "$n" --profile "$profile")
  ((quick)) && rerun+=(--quick)
  ((api_only)) && rerun+=(--api-only)
  rerun+=(--store "$store")
  [ -n "$json_out" ] && rerun+=(--json "$json_out")
  exec scripts/test-ns.sh "$0" "${rerun[@]}"
fi

for tool in skopeo wrk sqlite3; do
  command -v "$tool" >/dev/null ||
    { echo "bench.sh: $tool is missing; run scripts/test-env.sh install first" >&2; exit 1; }
done
bin=$PWD/target/$profile/publishd
floor=$PWD/target/$profile/engine-floor
for b in "$bin" "$floor"; do
  [ -x "$b" ] || { echo "bench.sh: $b is not built (cargo build --workspace --bins)" >&2; exit 1; }
done

# The interpreter itself, not a version manager's shim: the script starts
# python many times.
py3=$(python3 -c 'import sys; print(sys.executable)')
dir=$(mktemp -d /tmp/publishd-bench.XXXXXX)
own_env=0
server_pid=''
cleanup() {
  [ -z "$server_pid" ] || kill -9 "$server_pid" 2>/dev/null || true
  if ((own_env)); then scripts/test-env.sh down "$dir/env-dir"; fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo "bench.sh: failed at line $LINENO (row ${row:-setup}); logs were under $dir" >&2' ERR

if [ -n "${PUBLISHD_TEST_ENV_DIR:-}" ] && [ -f "$PUBLISHD_TEST_ENV_DIR/env" ]; then
  # shellcheck disable=SC1091
  . "$PUBLISHD_TEST_ENV_DIR/env"
else
  own_env=1
  scripts/test-env.sh up "$dir/env-dir" 2>"$dir/env-up.log" || { cat "$dir/env-up.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$dir/env-dir/env"
fi
export DOCKER_HOST=$PUBLISHD_TEST_DOCKER_HOST
# The docker CLI's own config: empty, never the host's.
export DOCKER_CONFIG=$dir/docker-config
mkdir -p "$DOCKER_CONFIG"
reg=$PUBLISHD_TEST_REGISTRY
# Repositories of this run: a registry shared with the tests holds others.
run_id=$(date +%s)-$$

cat >"$dir/drive.py" <<'PY'
"""Helpers of scripts/bench.sh: drives publishd over HTTP, makes the E
image, reads wrk's output, and prints the table."""
import gzip, hashlib, http.client, io, json, math, os, re, sys, tarfile, time
from datetime import datetime


def ts(value):
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Api:
    def __init__(self, url):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def call(self, method, path, body=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        reply = self.conn.getresponse()
        data = reply.read()
        return reply.status, (json.loads(data) if data else None)


def jobs(url, repo, source, n, prefix, expect, publish_via=None, per_job=4):
    """Submits N targets in jobs of PER_JOB tags, waits for all of them,
    answers the time from the first submit to the last job's end."""
    api = Api(url)
    # "@FILE": one source per job, from FILE's lines.
    sources = open(source[1:]).read().split() if source.startswith("@") else None
    specs = []
    for j in range(math.ceil(n / per_job)):
        tags = [{"strategy": "custom", "value": f"{prefix}-{j}-{k}"}
                for k in range(min(per_job, n - j * per_job))]
        image = sources[j] if sources else source
        spec = {"repo": repo, "images": [{"name": "app", "source": image}], "tags": tags}
        if publish_via:
            spec["publish_via"] = publish_via
        specs.append(spec)
    started = time.time()
    ids = []
    for spec in specs:
        status, job = api.call("POST", "/api/v1/jobs", spec)
        if status != 202:
            print(json.dumps({"refused": status, "answer": job}))
            sys.exit(3 if status == 422 else 1)
        ids.append(job["id"])
    while True:
        busy = 0
        for state in ("queued", "running"):
            _, page = api.call("GET", f"/api/v1/jobs?status={state}&limit=1")
            busy += len(page["jobs"])
        if not busy:
            break
        time.sleep(0.05)
    finished, targets = started, []
    for id in ids:
        _, job = api.call("GET", f"/api/v1/jobs/{id}")
        finished = max(finished, ts(job["finished_at"]))
        targets += job["targets"]
    seconds = finished - started
    ok = [t for t in targets if t["status"] == "succeeded"]
    up_to_date = sum(1 for t in ok if t.get("up_to_date"))
    ways = sorted({str(t.get("publish_via", t.get("published_via", "-"))) for t in ok})
    # How many went each way: through the engine, registry-side, or none (up to date).
    via = {}
    for t in ok:
        via[str(t.get("published_via"))] = via.get(str(t.get("published_via")), 0) + 1
    result = {"targets": len(targets), "succeeded": len(ok), "up_to_date": up_to_date,
              "seconds": seconds, "per_second": len(targets) / seconds, "ways": ways,
              "via": via}
    print(json.dumps(result))
    bad = [t for t in targets if t["status"] != "succeeded"]
    if bad:
        print(f"{len(bad)} targets did not succeed, e.g. {json.dumps(bad[0])}", file=sys.stderr)
        sys.exit(1)
    if expect == "up_to_date" and up_to_date != len(targets):
        print(f"only {up_to_date} of {len(targets)} targets were up to date", file=sys.stderr)
        sys.exit(1)
    if expect == "pushed" and up_to_date:
        print(f"{up_to_date} targets were up to date, expected fresh pushes", file=sys.stderr)
        sys.exit(1)


def registry_put(reg, method, path, body, content_type):
    conn = http.client.HTTPConnection(reg, timeout=60)
    conn.request(method, path, body=body, headers={"Content-Type": content_type})
    reply = conn.getresponse()
    reply.read()
    if reply.status not in (201, 202):
        sys.exit(f"{method} {path}: HTTP {reply.status}")
    return reply


def push_index(reg, repo):
    """Writes into REG/REPO what BuildKit pushes for --platform
    linux/amd64,linux/arm64 with provenance: two images of one fresh
    layer each, their attestation manifests, and an OCI index over them;
    prints the index's digest."""
    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = registry_put(reg, "POST", f"/v2/{repo}/blobs/uploads/", b"", "application/octet-stream")
        location = started.getheader("Location")
        location = location[location.index("/v2/"):] if "://" in location else location
        joint = "&" if "?" in location else "?"
        registry_put(reg, "PUT", f"{location}{joint}digest={digest}", data, "application/octet-stream")
        return {"size": len(data), "digest": digest}

    def manifest(document):
        data = json.dumps(document).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        registry_put(reg, "PUT", f"/v2/{repo}/manifests/{digest}", data, document["mediaType"])
        return {"mediaType": document["mediaType"], "size": len(data), "digest": digest}

    oci = "application/vnd.oci.image.manifest.v1+json"
    images, attestations = [], []
    for arch in ("amd64", "arm64"):
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w") as t:
            data = os.urandom(4096)
            info = tarfile.TarInfo("app.bin")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        diff_id = "sha256:" + hashlib.sha256(tar.getvalue()).hexdigest()
        layer = blob(gzip.compress(tar.getvalue()))
        config = blob(json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/app.bin"]},
                                  "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode())
        image = manifest({"schemaVersion": 2, "mediaType": oci,
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                          "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}]})
        images.append({**image, "platform": {"architecture": arch, "os": "linux"}})
        statement = blob(json.dumps({"_type": "https://in-toto.io/Statement/v0.1",
                                     "predicateType": "https://slsa.dev/provenance/v0.2",
                                     "subject": [{"name": f"pkg:docker/{repo}?platform=linux%2F{arch}",
                                                  "digest": {"sha256": image["digest"][7:]}}],
                                     "predicate": {}}).encode())
        att_config = blob(json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                                      "rootfs": {"type": "layers", "diff_ids": [statement["digest"]]}}).encode())
        attestation = manifest({"schemaVersion": 2, "mediaType": oci,
                                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **att_config},
                                "layers": [{"mediaType": "application/vnd.in-toto+json", **statement}]})
        attestations.append({**attestation, "platform": {"architecture": "unknown", "os": "unknown"},
                             "annotations": {"vnd.docker.reference.digest": image["digest"],
                                             "vnd.docker.reference.type": "attestation-manifest"}})
    index = manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": images + attestations})
    print(index["digest"])


def probe(url, body):
    """POSTs a job; prints the status and the error message."""
    status, answer = Api(url).call("POST", "/api/v1/jobs", json.loads(body))
    message = (answer or {}).get("message") or (answer or {}).get("error") or ""
    print(status, json.dumps(message)[:200])


def save_tar(path, tag, layers, layer_mb):
    """A docker-save archive of LAYERS fresh random layers of LAYER_MB each."""
    out = tarfile.open(path, "w")

    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        out.addfile(info, io.BytesIO(data))

    diff_ids, names = [], []
    for i in range(layers):
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as t:
            data = os.urandom(layer_mb * 1024 * 1024)
            info = tarfile.TarInfo(f"layer{i}.bin")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        blob = layer.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(blob).hexdigest())
        names.append(f"l{i}/layer.tar")
        add(names[-1], blob)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": ["/layer0.bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"bench layer {i}"} for i in range(layers)],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    add(config_name, config)
    add("manifest.json", json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": names}]).encode())
    out.close()


def wrk(path):
    """wrk --latency output -> requests/s, p50, p99 (ms), failures."""
    text = open(path).read()
    unit = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}

    def latency(pct):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        return float(m.group(1)) * unit[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    if rps < 1:
        print(f"wrk ({path}):\n{text}", file=sys.stderr)
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    print(json.dumps({"rps": rps, "p50_ms": latency(50), "p99_ms": latency(99),
                      "requests": requests, "errors": errors}))


# row -> (baseline row or None, how the ratio reads, target)
# target: (op, number, applies to) where applies to "ratio" or "value".
TARGETS = {
    "A_engine": ("B_load", ">=", 0.85, "ratio"),
    "A_auto": ("D4", ">=", 1.5, "ratio"),
    "A_auto_26": ("D4", ">=", 1.5, "ratio"),
    "A_fresh": ("D4_fresh", ">=", 1.5, "ratio"),
    "A_fresh_26": ("D4_fresh_26", ">=", 1.5, "ratio"),
    "A_registry": ("D4", ">=", 2.0, "ratio"),
    "A_index": ("D4", ">=", 1.0, "ratio"),
    "E_publishd": ("E_docker", "<=", 1.1, "ratio"),
    "F_post": (None, ">=", 10000, "value"),
    "F_get": (None, ">=", 25000, "value"),
    "F_post_p99": (None, "<", 10, "value"),
    "F_get_p99": (None, "<", 10, "value"),
    "F_rss_idle": (None, "<", 30, "value"),
    "F_rss_after": (None, "<", 100, "value"),
    "G_startup": (None, "<", 1, "value"),
    "G_rss_idle": (None, "<", 30, "value"),
    "H": ("A_engine", ">=", 5.0, "ratio"),
}


def report(results_path, machine_path, json_path):
    rows = [json.loads(line) for line in open(results_path)]
    by_name = {r["row"]: r for r in rows}
    table = []
    for r in rows:
        # A row may carry its own bound (G's list rows: per store).
        below = (None, "<", r["below"], "value") if "below" in r else (None, None, None, None)
        baseline, op, number, applies = TARGETS.get(r["row"], below)
        ratio = None
        if baseline and isinstance(r["value"], (int, float)):
            base = by_name.get(baseline, {}).get("value")
            if isinstance(base, (int, float)) and base:
                ratio = r["value"] / base
        target = met = None
        if op:
            target = f"{op} {number:g}" + (f" x {baseline}" if applies == "ratio" else f" {r['unit']}")
            measured = ratio if applies == "ratio" else r["value"]
            if isinstance(measured, (int, float)):
                met = {">=": measured >= number, "<=": measured <= number, "<": measured < number}[op]
        table.append({**r, "baseline": baseline, "ratio": ratio, "target": target, "met": met})
    machine = json.load(open(machine_path))
    print()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
    head = f"{'row':<13} {'what':<58} {'value':>21} {'unit':<10} {'ratio':>17}  target"
    print(head)
    print("-" * (len(head) + 24))
    for r in table:
        value = r["value"]
        shown = f"{value:21.2f}" if isinstance(value, (int, float)) else f"{value:>21}"
        ratio = f"{r['ratio']:.2f} x {r['baseline']}" if r["ratio"] is not None else ""
        verdict = "" if r["target"] is None else \
            f"{r['target']}: " + ("met" if r["met"] else "missed" if r["met"] is False else "n/a")
        print(f"{r['row']:<13} {r['what'][:58]:<58} {shown} {r['unit']:<10} {ratio:>17}  {verdict}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"machine": machine, "rows": table}, f, indent=2)
        print(f"\nwritten: {json_path}")


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "jobs":
        url, repo, source, n, prefix, expect, via = rest
        jobs(url, repo, source, int(n), prefix, expect, via or None)
    elif command == "probe":
        probe(*rest)
    elif command == "push-index":
        push_index(*rest)
    elif command == "save-tar":
        save_tar(rest[0], rest[1], int(rest[2]), int(rest[3]))
    elif command == "wrk":
        wrk(rest[0])
    elif command == "report":
        report(*rest)
PY
py() { "$py3" "$dir/drive.py" "$@"; }

# record ROW WHAT VALUE UNIT [EXTRA_JSON]: one line of the table. VALUE is a
# number, or a note such as "n/a (not implemented)".
record() {
  "$py3" -c '
import json, sys
row, what, value, unit, extra = sys.argv[1:6]
try: value = float(value)
except ValueError: pass
print(json.dumps({"row": row, "what": what, "value": value, "unit": unit, **json.loads(extra or "{}")}))
' "$1" "$2" "$3" "$4" "${5:-}" >>"$dir/results.jsonl"
  printf '  %-12s %s: %s %s  [at %ss]\n' "$1" "$2" "$3" "$4" \
    "$("$py3" -c 'import sys,time; print(round(time.time() - float(sys.argv[1]), 1))' "$bench_started")" >&2
}
field() { "$py3" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
now() { date +%s.%N; }
elapsed() { "$py3" -c 'import sys; print(float(sys.argv[2]) - float(sys.argv[1]))' "$1" "$2"; }
rss_mb() { awk '/^VmRSS:/ { printf "%.1f\n", $2 / 1024 }' "/proc/$1/status"; }
free_port() { "$py3" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

help=$("$bin" serve --help)
has_publish_via=0
grep -q -- '--publish-via' <<<"$help" && has_publish_via=1

# database NAME: where the server NAME keeps its jobs: a SQLite file, or a
# PostgreSQL database made for it on its first start.
database() {
  if [ "$store" = sqlite ]; then
    echo "$dir/$1.db"
    return
  fi
  local db=bench_${1//-/_}_${run_id//-/_}
  if [ ! -f "$dir/$1.pg" ]; then
    psql "$PUBLISHD_TEST_POSTGRES_URL" -qc "CREATE DATABASE $db" >&2
    echo "${PUBLISHD_TEST_POSTGRES_URL%/*}/$db" >"$dir/$1.pg"
  fi
  cat "$dir/$1.pg"
}

# start_server NAME [SERVE_ARG...]: sets url, server_pid and started_at
# (seconds, when the process was started), waits for /healthz.
start_server() {
  local name=$1 port
  shift
  port=$(free_port)
  url=http://127.0.0.1:$port
  local database
  database=$(database "$name")
  started_at=$(now)
  "$bin" serve --listen "127.0.0.1:$port" --database "$database" --docker-config "${server_docker_config:-$dir/none}" \
    --shutdown-grace 1 "$@" >>"$dir/$name.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 3000); do
    curl -sf "$url/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.01
  done
  echo "bench.sh: publishd ($name) did not come up:" >&2
  tail -n 20 "$dir/$name.log" >&2
  return 1
}
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=''
}

# run_jobs REPO SOURCE PREFIX EXPECT PUBLISH_VIA: N targets through the
# service at $url; prints the driver's JSON.
run_jobs() {
  py jobs "$url" "$1" "$2" "$n" "$3" "$4" "$5"
}

bench_started=$(now)
# Another build or test on the machine skews every row: say so in the table.
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== bench: N=$n, $profile binaries, $store store, engine $DOCKER_HOST, registry $reg, work dir $dir" >&2
echo "   publishd serve has --publish-via: $([ $has_publish_via = 1 ] && echo yes || echo no)" >&2

row=setup
# The small source image, and its seed push: every row starts with the
# registry holding its one layer, as in the issue's measurements.
mkdir -p "$dir/img" && head -c 4096 /dev/urandom >"$dir/img/blob"
# Kept: A_auto_26 imports the same image on dockerd 26.
tar -C "$dir/img" -c . >"$dir/src.tar"
docker import - "bench/src:$run_id" <"$dir/src.tar" >/dev/null
src=bench/src:$run_id
docker tag "$src" "$reg/bench-$run_id/seed:1"
docker push -q "$reg/bench-$run_id/seed:1" >/dev/null
seed_digest=$(docker inspect --format '{{index .RepoDigests 0}}' "$reg/bench-$run_id/seed:1")
seed_digest=${seed_digest##*@}
docker rmi -f "$reg/bench-$run_id/seed:1" >/dev/null

if ((api_only == 0)); then
row=B_load
out=$("$floor" --docker-host "$DOCKER_HOST" --source "$src" --repo "$reg/bench-$run_id/b-load" --n "$n" --lanes 4)
record B_load "engine floor: config-only load + push + delete, 4 lanes" "$(field "$out" per_second)" targets/s

row=A_engine
engine_args=()
((has_publish_via)) && engine_args=(--publish-via engine)
start_server a-engine --workers 4 --docker-host "$DOCKER_HOST" "${engine_args[@]}"
out=$(run_jobs "$reg/bench-$run_id/a-engine" "$src" a pushed "")
record A_engine "publishd, $n targets in jobs of 4, --workers 4, via the engine" "$(field "$out" per_second)" targets/s
row=H
out=$(run_jobs "$reg/bench-$run_id/a-engine" "$src" a up_to_date "")
record H "publishd, the same $n targets again (all up to date)" "$(field "$out" per_second)" targets/s
stop_server

row=A_auto
if ((has_publish_via)); then
  start_server a-auto --workers 4 --docker-host "$DOCKER_HOST" --publish-via auto
  out=$(run_jobs "$reg/bench-$run_id/a-auto" "$src" a pushed auto)
  record A_auto "publishd, $n targets, --publish-via auto (registry-side)" "$(field "$out" per_second)" targets/s \
    "{\"ways\": $("$py3" -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1])["ways"]))' "$out")}"
  stop_server
else
  record A_auto "publishd, $n targets, --publish-via auto (registry-side)" "n/a (not implemented)" targets/s
fi

row=A_registry
docker_source=docker://$reg/bench-$run_id/seed@$seed_digest
auto_args=()
((has_publish_via)) && auto_args=(--publish-via auto)
# No engine at all: a docker:// source is published wholly in the registry.
start_server a-registry --workers 4 --docker-host none "${auto_args[@]}"
probe=$(py probe "$url" "{\"repo\":\"$reg/bench-$run_id/a-registry-probe\",\"images\":[{\"name\":\"app\",\"source\":\"$docker_source\"}],\"tags\":[{\"strategy\":\"custom\",\"value\":\"probe\"}]}")
if ((has_publish_via)) && [ "${probe%% *}" = 202 ]; then
  out=$(run_jobs "$reg/bench-$run_id/a-registry" "$docker_source" a pushed "")
  record A_registry "publishd, $n targets from a docker:// source" "$(field "$out" per_second)" targets/s
else
  echo "   docker:// source answered: $probe" >&2
  record A_registry "publishd, $n targets from a docker:// source" "n/a (not implemented)" targets/s
fi

row=A_index
index_source=docker://$reg/bench-$run_id/index@$(py push-index "$reg" "bench-$run_id/index")
probe=$(py probe "$url" "{\"repo\":\"$reg/bench-$run_id/a-index-probe\",\"images\":[{\"name\":\"app\",\"source\":\"$index_source\"}],\"tags\":[{\"strategy\":\"custom\",\"value\":\"probe\"}]}")
if [ "${probe%% *}" = 202 ]; then
  out=$(run_jobs "$reg/bench-$run_id/a-index" "$index_source" a pushed "")
  record A_index "publishd, $n targets from a 2-platform index with attestations" "$(field "$out" per_second)" targets/s
else
  echo "   docker:// index answered: $probe" >&2
  record A_index "publishd, $n targets from a 2-platform index with attestations" "n/a (not implemented)" targets/s
fi
stop_server

row=C
started=$(now)
for i in $(seq 1 "$n"); do
  ref=$reg/bench-$run_id/c:c-$i
  docker tag "$src" "$ref"
  docker push -q "$ref" >/dev/null
  docker rmi "$ref" >/dev/null
done
record C "docker tag + docker push + docker rmi, a shell loop" \
  "$("$py3" -c "import sys; print($n / (float(sys.argv[2]) - float(sys.argv[1])))" "$started" "$(now)")" targets/s

skopeo_one() {
  skopeo copy -q --src-daemon-host "$DOCKER_HOST" --dest-tls-verify=false \
    "docker-daemon:$src" "docker://$reg/bench-$run_id/$1:$2" >/dev/null
}
export -f skopeo_one
export src reg run_id
row=D
started=$(now)
for i in $(seq 1 "$n"); do skopeo_one d "d-$i"; done
record D "skopeo copy docker-daemon: -> docker://, one at a time" \
  "$("$py3" -c "import sys; print($n / (float(sys.argv[2]) - float(sys.argv[1])))" "$started" "$(now)")" targets/s
row=D4
# One copy first: the registry answers 500 to concurrent first uploads into
# a new repository (every row starts with the registry holding the blobs).
skopeo_one d4 warm
started=$(now)
# shellcheck disable=SC2016 # expanded by the inner bash
seq 1 "$n" | xargs -P 4 -I{} bash -c 'skopeo_one d4 "d4-$1"' _ {}
record D4 "skopeo copy, 4 at once" \
  "$("$py3" -c "import sys; print($n / (float(sys.argv[2]) - float(sys.argv[1])))" "$started" "$(now)")" targets/s

# via DRIVER_JSON: the record's extra field of how many targets went which way.
via() { "$py3" -c 'import json,sys; print(json.dumps({"via": json.loads(sys.argv[1])["via"]}))' "$1"; }
# fresh_images HOST FILE: N/4 images of one fresh 256 KB layer each on the
# engine at HOST (imported, as a build's result), their names in FILE.
fresh_images() {
  local host=$1 file=$2 i
  : >"$file"
  for i in $(seq 1 $(((n + 3) / 4))); do
    rm -rf "$dir/fresh" && mkdir -p "$dir/fresh"
    head -c 262144 /dev/urandom >"$dir/fresh/layer.bin"
    tar -C "$dir/fresh" -c . | "$docker26" --host "$host" import - "bench/fresh-$i:$run_id" >/dev/null
    echo "bench/fresh-$i:$run_id" >>"$file"
  done
}
# fresh_rows SUFFIX HOST: A_fresh and D4_fresh on the engine at HOST, and
# A_auto there for dockerd 26 (SUFFIX _26).
fresh_rows() {
  local suffix=$1 host=$2 engine_name
  engine_name=$([ -z "$suffix" ] && echo "dockerd 20.10" || echo "dockerd 26, containerd store")
  if [ -n "$suffix" ]; then
    row=A_auto$suffix
    "$docker26" --host "$host" import - "bench/src:$run_id" <"$dir/src.tar" >/dev/null
    start_server "a-auto$suffix" --workers 4 --docker-host "$host" --publish-via auto
    out=$(run_jobs "$reg/bench-$run_id/a-auto$suffix" "$src" a pushed auto)
    record "A_auto$suffix" "publishd, $n targets, --publish-via auto, $engine_name" "$(field "$out" per_second)" targets/s \
      "$(via "$out")"
    stop_server
  fi
  row=A_fresh$suffix
  fresh_images "$host" "$dir/fresh-a$suffix"
  start_server "a-fresh$suffix" --workers 4 --docker-host "$host" --publish-via auto
  out=$(run_jobs "$reg/bench-$run_id/a-fresh$suffix" "@$dir/fresh-a$suffix" f pushed auto)
  record "A_fresh$suffix" "publishd, $n targets, jobs of 1 fresh image x 4 tags, $engine_name" "$(field "$out" per_second)" targets/s \
    "$(via "$out")"
  echo "   A_fresh$suffix went: $(via "$out")" >&2
  stop_server
  row=D4_fresh$suffix
  fresh_images "$host" "$dir/fresh-d$suffix"
  fresh_copy "$host" "$src" "$reg/bench-$run_id/d4-fresh$suffix/app:warm"
  # Tag by tag over the images: 4 copies of one new blob at once fail on
  # docker-registry 2.8 ("blob unknown"), so the 4 at once copy different
  # images, and an image's later tags find its layer there.
  awk '{ image[NR] = $0 } END { for (k = 0; k < 4; k++) for (i = 1; i <= NR; i++) print image[i], "f-" i "-" k }' \
    "$dir/fresh-d$suffix" | head -n "$n" >"$dir/pairs$suffix"
  started=$(now)
  # shellcheck disable=SC2016 # expanded by the inner bash
  xargs -P 4 -L 1 bash -c 'fresh_copy "$0" "$2" "$1/app:$3"' "$host" "$reg/bench-$run_id/d4-fresh$suffix" \
    <"$dir/pairs$suffix"
  record "D4_fresh$suffix" "skopeo copy, 4 at once, the same fresh images and tags, $engine_name" \
    "$("$py3" -c "import sys; print($n / (float(sys.argv[2]) - float(sys.argv[1])))" "$started" "$(now)")" targets/s
}
# fresh_copy HOST IMAGE REFERENCE: skopeo copies IMAGE from the engine at
# HOST to the registry. skopeo's docker-daemon transport reads the image
# with `GET /images/{name}/get` (docker save) over API 1.22, below dockerd
# 26's minimum (1.24, which DOCKER_MIN_API_VERSION cannot lower): there the
# docker 26 CLI makes the same request (`docker save`) and skopeo copies
# from the archive it wrote, the same work in two processes.
fresh_copy() {
  if [ "$1" = "$DOCKER_HOST" ]; then
    skopeo copy -q --src-daemon-host "$1" --dest-tls-verify=false "docker-daemon:$2" "docker://$3" >/dev/null
  else
    local archive
    archive=$(mktemp "$dir/save.XXXXXX")
    "$docker26" --host "$1" save -o "$archive" "$2"
    skopeo copy -q --dest-tls-verify=false "docker-archive:$archive" "docker://$3" >/dev/null
    rm -f "$archive"
  fi
}
docker26=$PUBLISHD_TEST_DOCKER_CLI
export -f fresh_copy
export DOCKER_HOST dir docker26
fresh_rows "" "$DOCKER_HOST"
fresh_rows _26 "$PUBLISHD_TEST_DOCKER26_HOST"

row=E
e_mb=$((3 * e_layer_mb))
start_server e --workers 4 --docker-host "$DOCKER_HOST" "${engine_args[@]}"
best_p='' best_d=''
for round in $(seq 1 "$e_rounds"); do
  for who in p d; do
    py save-tar "$dir/e-$who.tar" "bench/e-$who:$run_id-$round" 3 "$e_layer_mb"
    docker load -q -i "$dir/e-$who.tar" >/dev/null
    rm -f "$dir/e-$who.tar"
  done
  out=$(py jobs "$url" "$reg/bench-$run_id/e-publishd-$round" "bench/e-p:$run_id-$round" 1 e pushed "")
  secs=$(field "$out" seconds)
  ref=$reg/bench-$run_id/e-docker-$round:1
  docker tag "bench/e-d:$run_id-$round" "$ref"
  started=$(now)
  docker push -q "$ref" >/dev/null
  dsecs=$(elapsed "$started" "$(now)")
  echo "   E round $round: publishd $secs s, docker push $dsecs s" >&2
  best_p=$("$py3" -c 'import sys; print(min(float(x) for x in sys.argv[1:] if x))' "$secs" "$best_p")
  best_d=$("$py3" -c 'import sys; print(min(float(x) for x in sys.argv[1:] if x))' "$dsecs" "$best_d")
  docker rmi "$ref" "bench/e-d:$run_id-$round" "bench/e-p:$run_id-$round" >/dev/null
done
stop_server
record E_docker "$e_mb MB, 3 fresh layers, first push: docker push (best of $e_rounds)" "$best_d" s
record E_publishd "$e_mb MB, 3 fresh layers, first push: publishd (best of $e_rounds)" "$best_p" s
fi

# F: the workers are kept idle by a docker credential helper for the
# registry that never answers (until --credential-helper-timeout, an hour):
# each of the 4 lanes takes a target, gets as far as asking for credentials
# (after the source lookup, before any engine or registry write) and waits
# there, so nothing competes with the API for the CPU but wrk. Every POST
# has its own tag, so no lane is left idle to be woken by each submission;
# the source exists, so each submission resolves it on the engine, as
# submissions do. (An unreachable engine instead costs every POST the
# 2 s source lookup timeout; the empty engine makes lanes fail targets as
# fast as they come.)
row=F
mkdir -p "$dir/hang/bin" "$dir/hang/pids" "$dir/hang/config"
printf '#!/bin/sh\necho $$ >"%s/$$"\nexec sleep 3600\n' "$dir/hang/pids" >"$dir/hang/bin/docker-credential-bench-hang"
chmod +x "$dir/hang/bin/docker-credential-bench-hang"
echo "{\"credHelpers\": {\"$reg\": \"bench-hang\"}}" >"$dir/hang/config/config.json"
PATH=$dir/hang/bin:$PATH server_docker_config=$dir/hang/config start_server f --workers 4 \
  --docker-host "$DOCKER_HOST" --credential-helper-timeout 3600 --max-queued-targets 100000000
sleep 1
rss_idle=$(rss_mb "$server_pid")
# One submission first: the service connects to the engine on first use.
job_id=$(curl -sf -XPOST -H 'Content-Type: application/json' "$url/api/v1/jobs" \
  -d "{\"repo\":\"$reg/bench-$run_id/f\",\"images\":[{\"name\":\"app\",\"source\":\"$src\"}],\"tags\":[{\"strategy\":\"custom\",\"value\":\"warm\"}]}" |
  "$py3" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
cat >"$dir/post.lua" <<LUA
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
local body = '{"repo":"$reg/bench-$run_id/f","images":[{"name":"app","source":"$src"}],"tags":[{"strategy":"custom","value":"f-%d-%d"}]}'
function request()
  counter = counter + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, string.format(body, tid or 0, counter))
end
LUA
wrk -t2 -c"$wrk_conns" -d"${wrk_secs}s" --timeout 10s --latency -s "$dir/post.lua" "$url/api/v1/jobs" >"$dir/wrk-post.txt"
post=$(py wrk "$dir/wrk-post.txt")
wrk -t2 -c"$wrk_conns" -d"${wrk_secs}s" --timeout 10s --latency "$url/api/v1/jobs/$job_id" >"$dir/wrk-get.txt"
get=$(py wrk "$dir/wrk-get.txt")
rss_after=$(rss_mb "$server_pid")
stop_server
waiting=$(find "$dir/hang/pids" -type f | wc -l)
for f in "$dir"/hang/pids/*; do
  if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
done
echo "   F: $waiting lanes were waiting on the credential helper" >&2
for kind in post get; do
  res=${!kind}
  [ "$(field "$res" errors)" = 0 ] || echo "   F $kind: $(field "$res" errors) failed requests of $(field "$res" requests)" >&2
done
record F_post "POST /api/v1/jobs (1 target), wrk -t2 -c$wrk_conns, workers idle" "$(field "$post" rps)" req/s "{\"errors\": $(field "$post" errors)}"
record F_post_p99 "  its p99 (p50 $(field "$post" p50_ms) ms)" "$(field "$post" p99_ms)" ms
record F_get "GET /api/v1/jobs/{id}, wrk -t2 -c$wrk_conns" "$(field "$get" rps)" req/s "{\"errors\": $(field "$get" errors)}"
record F_get_p99 "  its p99 (p50 $(field "$get" p50_ms) ms)" "$(field "$get" p99_ms)" ms
record F_rss_idle "service RSS, idle (started, nothing submitted)" "$rss_idle" MB
record F_rss_after "service RSS after F ($(field "$post" requests) jobs submitted)" "$rss_after" MB

# G: a database of finished jobs, made directly in SQL in a schema the
# service migrated itself; one target, its image and the triggers' events
# per job, all finished in the last g_jobs seconds (inside the retention).
row=G
start_server g --workers 4 --docker-host "$DOCKER_HOST"
stop_server
started=$(now)
if [ "$store" = sqlite ]; then
sqlite3 "$dir/g.db" <<SQL
PRAGMA synchronous = OFF;
BEGIN;
CREATE TEMP TABLE seq AS
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $g_jobs) SELECT i FROM n;
INSERT INTO jobs (id, status, repo, repo_mode, submitted_by, spec_hash, created_at, started_at, finished_at)
SELECT printf('01900000-0000-7000-8000-%012x', i), CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END,
       '$reg/bench-g-' || (i % 100), 'multirepo', 'team-' || (i % 10), printf('%064x', i), t, t, t
FROM (SELECT i, strftime('%Y-%m-%dT%H:%M:%f', 'now', printf('-%d seconds', $g_jobs - i)) || '000Z' AS t FROM seq);
INSERT INTO job_images (job_id, position, name, source, source_image_id)
SELECT id, 0, 'app', '$src', 'sha256:' || spec_hash FROM jobs WHERE id LIKE '01900000-%';
INSERT INTO targets (job_id, position, submitted_by, image_name, source, strategy, tag, reference, reference_key,
                     status, digest, attempts, up_to_date, started_at, finished_at, image_position)
SELECT id, 0, submitted_by, 'app', '$src', 'custom', 'g-' || substr(id, 25), repo || '/app:g-' || substr(id, 25),
       repo || '/app:g-' || substr(id, 25), status, 'sha256:' || spec_hash, 1, 0,
       started_at, finished_at, 0
FROM jobs WHERE id LIKE '01900000-%';
COMMIT;
SQL
else
  # The same rows in PostgreSQL's dialect.
  psql "$(database g)" -q -v ON_ERROR_STOP=1 <<SQL
BEGIN;
INSERT INTO jobs (id, status, repo, repo_mode, submitted_by, spec_hash, created_at, started_at, finished_at)
SELECT '01900000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'),
       CASE WHEN i % 50 = 0 THEN 'failed' ELSE 'succeeded' END, '$reg/bench-g-' || (i % 100), 'multirepo',
       'team-' || (i % 10), lpad(to_hex(i), 64, '0'), t, t, t
FROM (SELECT i, to_char((now() - make_interval(secs => $g_jobs - i)) AT TIME ZONE 'UTC',
                        'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS t
      FROM generate_series(1, $g_jobs) AS i) AS seq;
INSERT INTO job_images (job_id, position, name, source, source_image_id)
SELECT id, 0, 'app', '$src', 'sha256:' || spec_hash FROM jobs WHERE id LIKE '01900000-%';
INSERT INTO targets (job_id, position, submitted_by, image_name, source, strategy, tag, reference, reference_key,
                     status, digest, attempts, up_to_date, started_at, finished_at, image_position)
SELECT id, 0, submitted_by, 'app', '$src', 'custom', 'g-' || substr(id, 25), repo || '/app:g-' || substr(id, 25),
       repo || '/app:g-' || substr(id, 25), status, 'sha256:' || spec_hash, 1, false,
       started_at, finished_at, 0
FROM jobs WHERE id LIKE '01900000-%';
COMMIT;
ANALYZE;
SQL
fi
echo "   G: $g_jobs jobs written in $(elapsed "$started" "$(now)") s" >&2
start_server g --workers 4 --docker-host "$DOCKER_HOST"
startup=$(elapsed "$started_at" "$(now)")
sleep 1
rss_idle=$(rss_mb "$server_pid")
# Every list filter, alone and as a publisher's restriction combines it:
# NAME:QUERY. "st0" matches no job (a status filter that scans reads
# them all); "q0" searches for what no job has (its whole window).
g_lists=(
  "all:"
  "st:&status=failed"
  "st0:&status=queued"
  "fail:&has_failed_target=true"
  "sub:&submitted_by=team-3"
  "subst:&submitted_by=team-3&status=failed"
  "subfail:&submitted_by=team-3&has_failed_target=true"
  "pre:&repo_prefix=$reg/bench-g-42"
  "q:&q=bench-g-42"
  "q0:&q=no-such-text"
  "subq:&submitted_by=team-3&q=bench-g-43"
)
g_below=20
[ "$store" = postgres ] && g_below=40
lists=()
for each in "${g_lists[@]}"; do
  name=${each%%:*}
  wrk -t2 -c"$wrk_conns" -d"${wrk_secs}s" --timeout 10s --latency "$url/api/v1/jobs?limit=50${each#*:}" \
    >"$dir/wrk-list-$name.txt"
  lists+=("$name:$(py wrk "$dir/wrk-list-$name.txt")")
done
middle=$(printf '01900000-0000-7000-8000-%012x' $((g_jobs / 2)))
wrk -t2 -c"$wrk_conns" -d"${wrk_secs}s" --timeout 10s --latency "$url/api/v1/jobs/$middle" >"$dir/wrk-g-get.txt"
gget=$(py wrk "$dir/wrk-g-get.txt")
rss_after=$(rss_mb "$server_pid")
stop_server
[ "$(field "$gget" errors)" = 0 ] || { echo "bench.sh: G get: $(field "$gget" errors) failed requests" >&2; false; }
for each in "${lists[@]}"; do
  name=${each%%:*} res=${each#*:}
  [ "$(field "$res" errors)" = 0 ] || { echo "bench.sh: G list $name: $(field "$res" errors) failed requests" >&2; false; }
done
for i in "${!g_lists[@]}"; do
  name=${g_lists[$i]%%:*} query=${g_lists[$i]#*:} res=${lists[$i]#*:}
  key=G_list
  [ "$name" = all ] || key=G_list_$name
  record "$key" "$g_jobs jobs: GET /api/v1/jobs?limit=50$query" "$(field "$res" rps)" req/s
  record "${key}_p99" "  its p99 (p50 $(field "$res" p50_ms) ms)" "$(field "$res" p99_ms)" ms "{\"below\": $g_below}"
done
record G_get "$g_jobs finished jobs: GET /api/v1/jobs/{id}" "$(field "$gget" rps)" req/s
record G_get_p99 "  its p99 (p50 $(field "$gget" p50_ms) ms)" "$(field "$gget" p99_ms)" ms
record G_startup "start-up with $g_jobs jobs: process start to /healthz" "$startup" s
record G_rss_idle "service RSS with $g_jobs jobs, idle" "$rss_idle" MB
record G_rss_after "service RSS after the G reads" "$rss_after" MB

row=report
registry_version=$(docker-registry --version 2>/dev/null | awk '{print $NF}' || true)
"$py3" -c '
import json, sys
keys = ["cores", "memory", "dockerd", "registry", "profile", "N", "load average at start", "at end"]
print(json.dumps(dict(zip(keys, sys.argv[1:]))))
' "$(nproc)" "$(free -g | awk '/^Mem:/ {print $2 " GB"}')" "$(dockerd --version | awk '{print $3}' | tr -d ,)" \
  "${registry_version:-?}" "$profile" "$n" "$load_at_start" "$(cut -d' ' -f1-3 /proc/loadavg)" >"$dir/machine.json"
py report "$dir/results.jsonl" "$dir/machine.json" "$json_out"
echo "bench: $("$py3" -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1])))' "$bench_started" "$(now)") s" >&2
