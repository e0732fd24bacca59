#!/usr/bin/env bash
# Brings up, privately, the real parts the integration tests talk to:
#   - two Docker engines (Debian 12's docker.io 20.10, classic image store):
#     `docker`, the one the tests publish through by default, and `empty`,
#     with no images, for schemathesis;
#   - `docker26`: Debian 13's dockerd 26 with the containerd image store,
#     its own containerd, and the docker 26 CLI with buildx (BuildKit) for
#     the tests' builds (see fetch_docker26);
#   - five registries (Debian's docker-registry 2.8):
#       open       127.0.0.1, plain HTTP, no auth; manifests may name
#                  layers by URL (foreign layers)
#       auth       127.0.0.1, plain HTTP, htpasswd basic auth
#       token      127.0.0.1, plain HTTP, token auth against our token
#                  server (testkit/src/bin/token-server.rs) on 127.0.0.1
#       tls        tls-registry.publishd.test (192.0.2.10), HTTPS with a
#                  certificate from a test CA that the `docker` engine
#                  trusts only through /etc/docker/certs.d; no auth
#       insecure   insecure-registry.publishd.test (192.0.2.11), plain HTTP,
#                  listed in the `docker` engine's --insecure-registry
#   - a Podman API service (Debian's podman), when it works here;
#   - a PostgreSQL server (Debian's postgresql) on 127.0.0.1, trust auth,
#     whose superuser `publishd` the tests use to make their own databases.
#
#   scripts/test-env.sh install    install the Debian packages all this needs,
#                                  and fetch docker 26 into the cache
#                                  (needs the network: run it before the
#                                  namespace)
#   scripts/test-env.sh up DIR     start everything under DIR, write DIR/env
#   scripts/test-env.sh down DIR   stop everything started under DIR
#
# `up` and `down` run inside the private network and mount namespace that
# scripts/test-ns.sh sets up: the names above, their addresses on `lo`, and
# a private /etc/docker come from there. DIR/env holds the PUBLISHD_TEST_*
# variables the tests read. Nothing here touches a system-wide Docker socket,
# the system registry service, or a system-wide Podman store.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:?usage: test-env.sh install | up DIR | down DIR}
if [ "$cmd" != install ]; then
  dir=${2:?usage: test-env.sh up|down DIR}
fi

user=publisher
# The password is chosen so that the standard base64 of the auth JSON holds
# '+' and '/': the engine wants URL-safe base64, and this catches a client
# that sends the standard alphabet.
password='s3cr?t>>>???~~~>?>?'
tls_name=tls-registry.publishd.test
insecure_name=insecure-registry.publishd.test
token_service=publishd-test-registry
token_issuer=publishd-test-token-server
token_server_bin=${CARGO_TARGET_DIR:-$repo/target}/debug/token-server
# What install downloads once and up only reads (scripts/container-test.sh
# keeps its Debian base here too).
cache=${PUBLISHD_TEST_CACHE:-/var/cache/publishd-test}
docker26_root=$cache/docker26/root

# command:package pairs, or /path/glob:package for what is not on PATH
# (Debian keeps the PostgreSQL server in /usr/lib/postgresql/VERSION/bin);
# podman is optional at `up` (see start_podman).
packages=(dockerd:docker.io docker-registry:docker-registry htpasswd:apache2-utils
  curl:curl python3:python3 openssl:openssl ip:iproute2 podman:podman
  chromium:chromium chromedriver:chromium-driver
  skopeo:skopeo wrk:wrk sqlite3:sqlite3 debootstrap:debootstrap
  '/usr/lib/postgresql/*/bin/initdb:postgresql' psql:postgresql-client)

missing_packages() {
  local pair what
  for pair in "${packages[@]}"; do
    what=${pair%%:*}
    if [[ "$what" == /* ]]; then
      compgen -G "$what" >/dev/null || echo "${pair#*:}"
    else
      command -v "$what" >/dev/null || echo "${pair#*:}"
    fi
  done
}

install() {
  local missing
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
      echo "missing packages: ${missing[*]} (run as root to install them)" >&2
      exit 1
    fi
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's postgresql package makes the `postgres` user; a server
  # installed another way may come without one. Here, not at `up`: /etc is
  # the host's inside the namespace too.
  if ! postgres_user >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
      echo "no user to run PostgreSQL as (run as root to make $pg_own_user)" >&2
      exit 1
    fi
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$pg_own_user"
  fi
  fetch_docker26
}

# fetch_docker26: Debian 13's Docker 26 (dockerd and the CLI), containerd
# and buildx, extracted under $docker26_root, which `up` runs from; nothing
# is installed into the system. The packages come with `apt-get download`
# through a private sources list, package lists and archive directory under
# $cache/docker26 (Debian 13 from the mirror this machine's apt uses for
# Debian, or PUBLISHD_TEST_DEBIAN_MIRROR), so the host's apt state is
# neither read nor changed. A complete extraction is kept: a cached machine
# downloads nothing. runc is not fetched: Debian 13's needs glibc 2.38,
# which Debian 12 lacks; the host's runc (a dependency of docker.io) is
# what dockerd 26 finds on PATH, and the tests' builds (FROM scratch, COPY,
# LABEL) never start a container anyway.
docker26_packages=(docker.io docker-cli containerd docker-buildx)
fetch_docker26() {
  [ -e "$docker26_root/.complete" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "docker 26 is not in $cache (run as root to fetch it)" >&2
    exit 1
  fi
  local c=$cache/docker26 mirror
  mirror=${PUBLISHD_TEST_DEBIAN_MIRROR:-$(debian_mirror)}
  mkdir -p "$c/lists/partial" "$c/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$c/sources.list"
  local apt=(apt-get -q -o "Dir::Etc::sourcelist=$c/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$c/lists" -o "Dir::Cache::archives=$c/archives"
    -o APT::Sandbox::User=root)
  echo "fetching Debian 13's ${docker26_packages[*]} from $mirror into $c" >&2
  "${apt[@]}" update >"$c/apt.log" 2>&1 || { cat "$c/apt.log" >&2; exit 1; }
  rm -f "$c"/archives/*.deb
  (cd "$c/archives" && "${apt[@]}" download "${docker26_packages[@]}") >>"$c/apt.log" 2>&1 ||
    { cat "$c/apt.log" >&2; exit 1; }
  local root deb
  root=$(mktemp -d "$c/root.XXXXXX")
  for deb in "$c"/archives/*.deb; do
    dpkg-deb -x "$deb" "$root"
  done
  # The versions the tests and the docs speak of; a newer Debian 13 point
  # release keeps them (stable), anything else is a change to look at.
  check_version "$root/usr/sbin/dockerd --version" 'Docker version 26\.1\.'
  check_version "$root/usr/bin/docker --version" 'Docker version 26\.1\.'
  check_version "$root/usr/bin/containerd --version" ' 1\.7\.'
  check_version "$root/usr/libexec/docker/cli-plugins/docker-buildx version" ' 0\.13\.'
  touch "$root/.complete"
  rm -rf "$docker26_root"
  mv "$root" "$docker26_root"
  # The extraction is what is kept.
  rm -rf "$c/lists" "$c/archives"
}

# debian_mirror: the URI this machine's apt uses for Debian's main archive.
debian_mirror() {
  local codename uri
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  uri=$(apt-get indextargets --format '$(REPO_URI)' "Origin: Debian" "Codename: $codename" 2>/dev/null | head -n 1)
  echo "${uri:-http://deb.debian.org/debian/}"
}

# check_version COMMAND REGEX: COMMAND runs here and prints REGEX.
check_version() {
  local out
  out=$($1 2>&1) && grep -Eq "$2" <<<"$out" ||
    { echo "fetched docker 26: \`$1\` printed \`$out\`, expected /$2/" >&2; exit 1; }
}

# postgres_bin: the newest server's bin directory (initdb, postgres,
# pg_isready), which is not on PATH.
postgres_bin() {
  local initdb
  initdb=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1)
  echo "${initdb%/initdb}"
}

# postgres_user: who runs the server (it refuses root): Debian's
# `postgres`, else the user `install` makes.
pg_own_user=publishd-postgres
postgres_user() {
  local u
  for u in postgres "$pg_own_user"; do
    if id -u "$u" >/dev/null 2>&1; then echo "$u"; return 0; fi
  done
  return 1
}

# up runs without the network: it can only check.
check_setup() {
  local missing
  mapfile -t missing < <(missing_packages | grep -vx podman || true)
  if ((${#missing[@]})); then
    echo "missing packages: ${missing[*]}; run scripts/test-env.sh install first" >&2
    exit 1
  fi
  if ! postgres_user >/dev/null; then
    echo "no user to run PostgreSQL as; run scripts/test-env.sh install first" >&2
    exit 1
  fi
  if [ ! -e "$docker26_root/.complete" ]; then
    echo "docker 26 is not in $cache; run scripts/test-env.sh install first" >&2
    exit 1
  fi
  if ! mountpoint -q /etc/docker || [ "$(resolve "$tls_name")" != 192.0.2.10 ] ||
    [ "$(resolve "$insecure_name")" != 192.0.2.11 ]; then
    echo "test-env.sh up needs the namespace of scripts/test-ns.sh (a private /etc/docker," >&2
    echo "and $tls_name, $insecure_name in a private /etc/hosts); e.g. scripts/test-ns.sh bash" >&2
    exit 1
  fi
}

resolve() {
  getent ahostsv4 "$1" | awk '{ print $1; exit }'
}

free_port() {
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "${1:-127.0.0.1}"
}

# wait_for WHAT PROBE PID: up to 20 s for PROBE to succeed, while PID runs.
wait_for() {
  local what=$1 probe=$2 pid=$3
  for _ in $(seq 1 100); do
    if eval "$probe" >/dev/null 2>&1; then return 0; fi
    running "$pid" || break
    sleep 0.2
  done
  echo "$what did not come up; its log:" >&2
  return 1
}

# make_pki: a test CA (P-256), a server certificate for the TLS registry
# signed by it, and an RSA key with a self-signed certificate for the token
# server (RS256 signatures; the certificate is the token registry's
# rootcertbundle and rides in each token's x5c header).
make_pki() {
  local p=$dir/pki
  mkdir -p "$p"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj "/CN=publishd test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$tls_name" \
    -keyout "$p/tls.key" -out "$p/tls.csr" 2>/dev/null
  printf '%s\n' "subjectAltName=DNS:$tls_name" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$p/tls.ext"
  openssl x509 -req -in "$p/tls.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" \
    -set_serial "0x$(openssl rand -hex 8)" -days 30 -extfile "$p/tls.ext" -out "$p/tls.crt" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=publishd test token signer" \
    -keyout "$p/token.key" -out "$p/token.crt" 2>/dev/null
}

# start_registry NAME ADDR:PORT PROBE_URL [CONFIG_LINE...]: a docker-registry
# with its state under $dir/NAME. The config lines follow `http.addr`: lines
# indented by two spaces extend `http`, others add top-level keys.
start_registry() {
  local name=$1 addr=$2 probe=$3
  shift 3
  mkdir -p "$dir/$name/data"
  {
    echo "version: 0.1"
    echo "log: {level: warn}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $dir/$name/data}"
    echo "  delete: {enabled: true}"
    echo "http:"
    echo "  addr: $addr"
    printf '%s\n' "$@"
  } >"$dir/$name/config.yml"
  docker-registry serve "$dir/$name/config.yml" >"$dir/$name/log" 2>&1 &
  echo $! >"$dir/$name/pid"
  wait_for "registry $name" "curl -s -o /dev/null --cacert $dir/pki/ca.crt $probe" $! ||
    { cat "$dir/$name/log" >&2; exit 1; }
}

start_token_server() {
  local port=$1
  if [ ! -x "$token_server_bin" ]; then
    (cd "$repo" && cargo build -p publishd-testkit --locked --quiet)
  fi
  mkdir -p "$dir/token-server"
  TOKEN_SERVER_PASSWORD=$password "$token_server_bin" --listen "127.0.0.1:$port" \
    --service "$token_service" --issuer "$token_issuer" \
    --key "$dir/pki/token.key" --cert "$dir/pki/token.crt" \
    --user "$user" --log "$dir/token-server/requests.log" \
    >"$dir/token-server/log" 2>&1 &
  echo $! >"$dir/token-server/pid"
  # A bare TCP connect: a GET would add a line to the request log.
  wait_for "token server" "(exec 3<>/dev/tcp/127.0.0.1/$port)" $! ||
    { cat "$dir/token-server/log" >&2; exit 1; }
}

# start_dockerd NAME SOCKET [DOCKERD_ARG...]: a private dockerd with its state
# under $dir/NAME. SOCKET stays short: unix socket paths are limited to 108
# bytes.
start_dockerd() {
  local name=$1 sock=$2
  shift 2
  mkdir -p "$dir/$name"
  dockerd --data-root "$dir/$name/data" --exec-root "$dir/$name/exec" \
    --pidfile "$dir/$name/pid" -H "unix://$sock" \
    --iptables=false --ip6tables=false --bridge=none "$@" \
    >"$dir/$name/log" 2>&1 &
  wait_for "dockerd ($name)" "curl -sf --unix-socket $sock http://d/_ping" $! ||
    { tail -n 30 "$dir/$name/log" >&2; exit 1; }
}

# start_docker26 INSECURE_REGISTRY: dockerd 26 from $docker26_root with the
# containerd image store (its own --config-file, so no daemon.json of the
# host's is read), on $dir/d26.sock. With the extracted usr/bin and usr/sbin
# first on PATH it starts the containerd it came with, under its own data
# and exec roots; its own containerd namespaces keep its images and
# BuildKit's apart from any other containerd's. It reads the TLS registry's
# CA from /etc/docker/certs.d like the `docker` engine and gets the same
# insecure registry. $dir/docker26/config is the DOCKER_CONFIG of the
# docker 26 CLI the tests build with: buildx is its CLI plugin there.
start_docker26() {
  local d=$dir/docker26
  mkdir -p "$d/config/cli-plugins"
  echo '{"features":{"containerd-snapshotter":true}}' >"$d/daemon.json"
  ln -s "$docker26_root/usr/libexec/docker/cli-plugins/docker-buildx" "$d/config/cli-plugins/docker-buildx"
  PATH=$docker26_root/usr/bin:$docker26_root/usr/sbin:$PATH start_dockerd docker26 "$dir/d26.sock" \
    --config-file "$d/daemon.json" --insecure-registry "$1" \
    --containerd-namespace publishd-test-docker26 \
    --containerd-plugins-namespace publishd-test-docker26-plugins
  curl -sf --unix-socket "$dir/d26.sock" http://d/info | grep -q '"driver-type","io.containerd.snapshotter.v1"' ||
    { echo "dockerd 26 does not use the containerd image store" >&2; exit 1; }
}

# start_podman REGISTRY...: `podman system service` on $dir/p.sock with its
# store, config and runtime files under $dir/podman (overlay driver), the
# plain-HTTP REGISTRYs marked insecure in its registries.conf; then a check
# through its Docker-compatible API: import, build FROM the imported image +
# LABEL, push to the first REGISTRY (an open one), remove both images. Sets
# podman_host, or podman_unavailable to the reason when any of it fails.
# Podman as root also writes /var/lib/containers/cache and
# /var/cache/containers whatever the config says: scripts/test-ns.sh keeps
# those writes in the namespace.
podman_host='' podman_unavailable=''
start_podman() {
  local open=$1 registry
  local p=$dir/podman sock=$dir/p.sock
  if ! command -v podman >/dev/null; then
    podman_unavailable="podman is not installed (scripts/test-env.sh install installs it)"
    return 0
  fi
  mkdir -p "$p"/{storage,run,tmp,net,xdg-runtime,xdg-config,xdg-data,xdg-cache}
  chmod 700 "$p/xdg-runtime"
  printf '%s\n' "[storage]" 'driver = "overlay"' "graphroot = \"$p/storage\"" \
    "runroot = \"$p/run\"" >"$p/storage.conf"
  {
    echo 'unqualified-search-registries = []'
    for registry in "$@"; do
      printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$registry"
    done
  } >"$p/registries.conf"
  # File locks and events under tmp_dir: the defaults are /dev/shm and journald.
  printf '%s\n' "[engine]" "tmp_dir = \"$p/tmp\"" 'lock_type = "file"' \
    'cgroup_manager = "cgroupfs"' 'events_logger = "file"' "events_logfile_path = \"$p/events.log\"" \
    "[network]" "network_config_dir = \"$p/net\"" >"$p/containers.conf"
  CONTAINERS_STORAGE_CONF=$p/storage.conf CONTAINERS_REGISTRIES_CONF=$p/registries.conf \
    CONTAINERS_CONF=$p/containers.conf TMPDIR=$p/tmp XDG_RUNTIME_DIR=$p/xdg-runtime \
    XDG_CONFIG_HOME=$p/xdg-config XDG_DATA_HOME=$p/xdg-data XDG_CACHE_HOME=$p/xdg-cache \
    podman system service --time=0 "unix://$sock" >"$p/log" 2>&1 &
  echo $! >"$p/pid"
  if ! wait_for podman "curl -sf --unix-socket $sock http://d/_ping" $! 2>/dev/null; then
    podman_unavailable="podman system service did not answer /_ping: $(tail -n 1 "$p/log")"
  elif podman_unavailable=$(check_podman "$sock" "$open"); then
    podman_host=unix://$sock
    return 0
  fi
  echo "podman unavailable: $podman_unavailable" >&2
  stop_pidfiles "$p/pid"
}

# check_podman SOCKET REGISTRY: prints why the check failed, if it does.
check_podman() {
  local sock=$1 registry=$2 c=$dir/podman/check out id digest image
  local api=(curl -s --unix-socket "$sock") repo=$registry/publishd-testenv/podman-check
  mkdir -p "$c/layer" "$c/context"
  echo podman-check >"$c/layer/file"
  out=$(tar -C "$c/layer" -c . | "${api[@]}" -X POST -H 'Content-Type: application/x-tar' \
    --data-binary @- "http://d/v1.41/images/create?fromSrc=-&repo=publishd-testenv/podman-check&tag=source")
  id=$(sed -n 's/.*"id":"\(sha256:[0-9a-f]*\)".*/\1/p' <<<"$out" | tail -n 1)
  [ -n "$id" ] || { echo "import failed: $out"; return 1; }
  printf 'FROM %s\nLABEL a=b\n' "$id" >"$c/context/Dockerfile"
  out=$(tar -C "$c/context" -c Dockerfile | "${api[@]}" -X POST -H 'Content-Type: application/x-tar' \
    --data-binary @- "http://d/v1.41/build?t=$repo:built")
  if ! grep -q '"aux":{"ID":' <<<"$out" || grep -q errorDetail <<<"$out"; then
    echo "build FROM the imported image failed: $(tail -n 1 <<<"$out")"
    return 1
  fi
  # No tlsVerify=false: registries.conf is what lets it use plain HTTP.
  out=$("${api[@]}" -X POST -H "X-Registry-Auth: e30=" "http://d/v1.41/images/$repo/push?tag=built")
  digest=$(sed -n 's/.*built: digest: \(sha256:[0-9a-f]*\) size.*/\1/p' <<<"$out" | tail -n 1)
  [ -n "$digest" ] || { echo "push to $registry failed: $(tail -n 1 <<<"$out")"; return 1; }
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X DELETE "http://$registry/v2/publishd-testenv/podman-check/manifests/$digest")" = 202 ] ||
    { echo "the registry does not hold the pushed $digest"; return 1; }
  for image in "$repo:built" "$id"; do
    [ "$("${api[@]}" -o /dev/null -w '%{http_code}' -X DELETE "http://d/v1.41/images/$image")" = 200 ] ||
      { echo "removing $image failed"; return 1; }
  done
}

# start_postgres PORT: a PostgreSQL server on 127.0.0.1:PORT with its data,
# unix socket and log under $dir/postgres, and a superuser `publishd` that
# any local connection may use without a password (initdb --auth=trust:
# `local` and `host` on 127.0.0.1/::1). The tests connect as it and make
# their own databases.
start_postgres() {
  local port=$1 bin pg_user p=$dir/postgres
  bin=$(postgres_bin)
  pg_user=$(postgres_user)
  mkdir -p "$p"
  chown "$pg_user:" "$p"
  # Not root, and only one capability: CAP_DAC_READ_SEARCH, ambient so that
  # it survives initdb's and the server's execs. $dir and its parents are
  # usually root's 0700 mktemp directories, which the user could not pass
  # through otherwise; this way no directory's mode changes.
  local as_pg=(setpriv --reuid "$pg_user" --regid "$(id -g "$pg_user")" --init-groups
    --inh-caps +dac_read_search --ambient-caps +dac_read_search --)
  "${as_pg[@]}" "$bin/initdb" -D "$p/data" -U publishd --auth=trust \
    --encoding=UTF8 --no-locale --no-sync >"$p/initdb.log" 2>&1 ||
    { cat "$p/initdb.log" >&2; exit 1; }
  # The socket beside the data: the default, /var/run/postgresql, is the
  # host's. Durability costs time and buys nothing here (the data goes with
  # $dir): no fsync, no synchronous commit, no full-page writes. Many test
  # processes, each with its own pool, run at once: 400 connections.
  cat >>"$p/data/postgresql.conf" <<CONF

# scripts/test-env.sh
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$p'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 400
CONF
  "${as_pg[@]}" "$bin/postgres" -D "$p/data" >"$p/log" 2>&1 &
  echo $! >"$p/pid"
  wait_for postgres "$bin/pg_isready -q -h 127.0.0.1 -p $port -U publishd -d postgres" $! ||
    { tail -n 30 "$p/log" >&2; exit 1; }
}

up() {
  check_setup
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)

  make_pki

  local open_port auth_port token_port token_server_port tls_port insecure_port postgres_port
  local tls_addr insecure_addr
  tls_addr=$(resolve "$tls_name")
  insecure_addr=$(resolve "$insecure_name")

  open_port=$(free_port)
  # Manifests may name layers by URL (a Windows image's foreign layers), so
  # that the tests can hold a source publishd must refuse.
  start_registry open "127.0.0.1:$open_port" "http://127.0.0.1:$open_port/v2/" \
    "validation: {manifests: {urls: {allow: ['^https?://']}}}"

  mkdir -p "$dir/auth"
  htpasswd -Bbn "$user" "$password" >"$dir/auth/htpasswd"
  auth_port=$(free_port)
  start_registry auth "127.0.0.1:$auth_port" "http://127.0.0.1:$auth_port/v2/" \
    "auth:" "  htpasswd: {realm: publishd-test, path: $dir/auth/htpasswd}"

  token_server_port=$(free_port)
  start_token_server "$token_server_port"
  token_port=$(free_port)
  start_registry token "127.0.0.1:$token_port" "http://127.0.0.1:$token_port/v2/" \
    "auth:" "  token:" "    realm: http://127.0.0.1:$token_server_port/token" \
    "    service: $token_service" "    issuer: $token_issuer" \
    "    rootcertbundle: $dir/pki/token.crt"

  tls_port=$(free_port "$tls_addr")
  # The engine reads certs.d at each connection: no restart, no daemon flag.
  # /etc/docker is the namespace's private tmpfs (see scripts/test-ns.sh).
  mkdir -p "/etc/docker/certs.d/$tls_name:$tls_port"
  cp "$dir/pki/ca.crt" "/etc/docker/certs.d/$tls_name:$tls_port/ca.crt"
  echo "/etc/docker/certs.d/$tls_name:$tls_port" >"$dir/certs.d-entry"
  start_registry tls "$tls_addr:$tls_port" "https://$tls_name:$tls_port/v2/" \
    "  tls: {certificate: $dir/pki/tls.crt, key: $dir/pki/tls.key}"

  insecure_port=$(free_port "$insecure_addr")
  start_registry insecure "$insecure_addr:$insecure_port" "http://$insecure_name:$insecure_port/v2/"

  # The engine the tests publish through.
  start_dockerd docker "$dir/d.sock" --insecure-registry "$insecure_name:$insecure_port"
  # A second engine with no images at all, for the schemathesis run: no
  # generated job can name an image that exists, so nothing is ever pushed.
  start_dockerd empty "$dir/e.sock"
  start_docker26 "$insecure_name:$insecure_port"

  start_podman "127.0.0.1:$open_port" "127.0.0.1:$auth_port" "127.0.0.1:$token_port" \
    "$insecure_name:$insecure_port"

  postgres_port=$(free_port)
  start_postgres "$postgres_port"

  # A docker credential helper the credential tests name in a config: it
  # answers for the auth registry only, like a real helper with one entry.
  mkdir -p "$dir/bin"
  cat >"$dir/bin/docker-credential-publishd-test" <<HELPER
#!/bin/sh
[ "\$1" = get ] || exit 1
read -r server
if [ "\$server" = "127.0.0.1:$auth_port" ]; then
  printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}' "\$server" "$user" '$password'
else
  echo "credentials not found in native keychain"
  exit 1
fi
HELPER
  chmod +x "$dir/bin/docker-credential-publishd-test"

  local podman_line
  if [ -n "$podman_host" ]; then
    podman_line="export PUBLISHD_TEST_PODMAN_HOST=$podman_host"
  else
    podman_line="export PUBLISHD_TEST_PODMAN_UNAVAILABLE=$(printf %q "$podman_unavailable")"
  fi
  cat >"$dir/env" <<ENV
export PUBLISHD_TEST_DOCKER_HOST=unix://$dir/d.sock
export PUBLISHD_TEST_EMPTY_DOCKER_HOST=unix://$dir/e.sock
export PUBLISHD_TEST_DOCKER26_HOST=unix://$dir/d26.sock
export PUBLISHD_TEST_DOCKER_CLI=$docker26_root/usr/bin/docker
export PUBLISHD_TEST_DOCKER_CONFIG=$dir/docker26/config
export PUBLISHD_TEST_REGISTRY=127.0.0.1:$open_port
export PUBLISHD_TEST_AUTH_REGISTRY=127.0.0.1:$auth_port
export PUBLISHD_TEST_AUTH_USER=$user
export PUBLISHD_TEST_AUTH_PASSWORD='$password'
export PUBLISHD_TEST_TOKEN_REGISTRY=127.0.0.1:$token_port
export PUBLISHD_TEST_TOKEN_SERVER=http://127.0.0.1:$token_server_port
export PUBLISHD_TEST_TOKEN_SERVER_LOG=$dir/token-server/requests.log
export PUBLISHD_TEST_TLS_REGISTRY=$tls_name:$tls_port
export PUBLISHD_TEST_CA=$dir/pki/ca.crt
export PUBLISHD_TEST_CERTS_DIR=/etc/docker/certs.d
export PUBLISHD_TEST_INSECURE_REGISTRY=$insecure_name:$insecure_port
export PUBLISHD_TEST_POSTGRES_URL=postgres://publishd@127.0.0.1:$postgres_port/postgres
$podman_line
export PUBLISHD_TEST_ENV_DIR=$dir
export PATH=$dir/bin:\$PATH
ENV
  echo "test environment up: $dir/env" >&2
}

# running PID: true while the process exists and is not a zombie (what we
# start here outlives its parent shell, and whoever adopts it may reap late).
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# stop_pidfiles FILE...: ends the processes named in the pid files, all at
# once: SIGTERM, up to 10 s, then SIGKILL.
stop_pidfiles() {
  local f pid pids=()
  for f in "$@"; do
    [ -f "$f" ] && pids+=("$(cat "$f")")
  done
  ((${#pids[@]})) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 100); do
    local left=0
    for pid in "${pids[@]}"; do
      if running "$pid"; then left=1; fi
    done
    ((left)) || break
    sleep 0.1
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
  rm -f "$@"
}

down() {
  [ -d "$dir" ] || return 0
  # SIGTERM is PostgreSQL's smart shutdown, which waits for every client to
  # leave; SIGQUIT is its immediate one: it ends its backends and exits
  # without a checkpoint (the data goes next anyway).
  if [ -f "$dir/postgres/pid" ]; then
    kill -QUIT "$(cat "$dir/postgres/pid")" 2>/dev/null || true
  fi
  local name pidfiles=()
  for name in podman token-server open auth token tls insecure docker empty docker26 postgres; do
    pidfiles+=("$dir/$name/pid")
  done
  stop_pidfiles "${pidfiles[@]}"
  local entry
  entry=$(cat "$dir/certs.d-entry" 2>/dev/null || true)
  if [[ "$entry" == /etc/docker/certs.d/?* ]] && mountpoint -q /etc/docker; then
    rm -rf "$entry"
  fi
  # dockerd leaves overlay mounts behind if it was killed hard; podman keeps
  # its overlay store mounted.
  grep -o " $dir/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$dir"
}

case "$cmd" in
  install) install ;;
  up) up ;;
  down) down ;;
  *) echo "usage: test-env.sh install | up DIR | down DIR" >&2; exit 2 ;;
esac
