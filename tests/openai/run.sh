#!/usr/bin/env bash
# The OpenAI-compatible server end to end: starts `latent serve` on a free port with the
# model in $LATENT_MODEL, waits for /health, runs tests/openai/test_server.py with the
# official `openai` client, and always stops the server (its exit status after SIGTERM is
# checked: a graceful shutdown exits 0). Called by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${LATENT_MODEL:-}" ]; then
  echo "== server tests skipped: LATENT_MODEL is unset (no model to serve)"
  exit 0
fi

python3 -m venv target/serve-venv
target/serve-venv/bin/pip install -q openai==3.51.0 pytest==9.2.0 httpx==0.28.1
py=target/serve-venv/bin/python

# The test-profile binary (opt-level 2; its artifacts are those of `cargo test`).
cargo build --profile test -p latent-cli --bin latent
bin="$(pwd)/target/debug/latent"

logs="$(mktemp -d)"
"$bin" serve --port 0 --model "$LATENT_MODEL" --threads 2 >"$logs/out" 2>"$logs/err" &
pid=$!
stop_server() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap stop_server EXIT
fail() {
  echo "error: $*" >&2
  echo "-- latent serve stderr:" >&2
  cat "$logs/err" >&2
  exit 1
}

url=""
for _ in $(seq 1 600); do
  url="$(sed -n 's|^listening on \(http://.*\)$|\1|p' "$logs/out")"
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || fail "latent serve exited before listening"
  sleep 0.1
done
[ -n "$url" ] || fail "latent serve printed no address within 60 s"
echo "== server tests against $url"
"$py" - "$url" <<'EOF' || fail "/health did not answer 200 within 120 s"
import sys, time, urllib.request, urllib.error
t0 = time.time()
while time.time() - t0 < 120:
    try:
        if urllib.request.urlopen(sys.argv[1] + "/health", timeout=5).status == 200:
            sys.exit(0)
    except (urllib.error.URLError, OSError):
        pass
    time.sleep(0.1)
sys.exit(1)
EOF

status=0
LATENT_URL="$url" LATENT_BIN="$bin" "$py" -m pytest -q -p no:cacheprovider tests/openai || status=$?

# Graceful shutdown: SIGTERM, exit status 0.
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
trap - EXIT
if [ "$status" -ne 0 ]; then
  fail "the server tests failed (pytest status $status)"
fi
[ "$rc" -eq 0 ] || fail "latent serve exited with status $rc after SIGTERM"
echo "== latent serve stopped cleanly"
