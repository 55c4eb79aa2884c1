#!/usr/bin/env bash
# Schemathesis against a live supervisor, driven by its own OpenAPI document (GET /v1/openapi.json).
#
#   scripts/schemathesis.sh            # from .ci/run, before the test suite
#
# Schemathesis is installed into a throwaway venv (MESHKIT_ST_VENV, default /tmp/meshkit-schemathesis-venv),
# never a meshkit dependency. If PyPI cannot be reached the script says so and exits 0 (skipped).
# Schemathesis cannot sign requests, so it talks to a small signing proxy (stdlib, below) that passes
# each request through byte for byte, adding the four X-Meshkit-* headers (admin key) computed over the
# exact method, target and body it received. Fails (exit 1) on any server error, undocumented status,
# wrong content type, answer not matching its schema, or schema-invalid data accepted.
#
# Environment: MESHKIT_ST_MAX_TIME (seconds, default 90), MESHKIT_ST_SEED (default 1),
# MESHKIT_ST_MAX_EXAMPLES (per operation and phase, default 40), MESHKIT_ST_ARGS (more schemathesis
# run options, e.g. "--include-operation-id heartbeat"), MESHKIT_ST_KEEP=1 (keep the work dir and its logs).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${MESHKIT_ST_VENV:-/tmp/meshkit-schemathesis-venv}
MAX_TIME=${MESHKIT_ST_MAX_TIME:-90}
WORK=$(mktemp -d /tmp/meshkit-st.XXXXXX)
SUP_PID= PROXY_PID=
cleanup() {
  [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null
  [ -n "$SUP_PID" ] && kill "$SUP_PID" 2>/dev/null
  wait 2>/dev/null
  [ -n "${MESHKIT_ST_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/schemathesis" ]; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1 || \
     ! timeout 150 "$VENV/bin/pip" install -q --disable-pip-version-check schemathesis >"$WORK/pip.log" 2>&1; then
    echo "schemathesis: could not install it (PyPI unreachable?); skipped. $(tail -n 1 "$WORK/pip.log" 2>/dev/null)"
    rm -rf "$VENV"
    exit 0
  fi
fi

python3 -m meshkit init --dir "$WORK" >/dev/null || exit 1
# Bodies up to 16 MiB: generated over-long strings must reach validation (400), not stop at 413.
sed -i 's/^max_body = .*/max_body = 16777216/' "$WORK/meshkit.toml"
KEY=$(grep '^admin-1 ' "$WORK/keys")

mkfifo "$WORK/sup.out"
python3 -m meshkit supervisor --config "$WORK/meshkit.toml" --listen 127.0.0.1:0 >"$WORK/sup.out" 2>"$WORK/supervisor.log" &
SUP_PID=$!
exec 3<"$WORK/sup.out"
read -r -t 30 SUP <&3 || { echo "schemathesis: the supervisor did not start"; cat "$WORK/supervisor.log"; exit 1; }
cat <&3 >/dev/null &

cat >"$WORK/proxy.py" <<'EOF'
import hashlib, hmac, os, socket, sys, threading, time
up_host, up_port = sys.argv[1][7:].rsplit(":", 1)
kid, _, secret = sys.argv[2].split()
SIGNED = (b"x-meshkit-key", b"x-meshkit-timestamp", b"x-meshkit-nonce", b"x-meshkit-signature")

def read_request(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = c.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    n = 0
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length" and v.strip().isdigit():
            n = int(v.strip())
    while len(rest) < n:
        chunk = c.recv(65536)
        if not chunk:
            break
        rest += chunk
    return lines, rest[:n]

def serve(c):
    try:
        got = read_request(c)
        if got is None:
            return
        lines, body = got
        method, target = lines[0].split(b" ")[:2]
        ts, nonce = str(int(time.time())), os.urandom(16).hex()
        digest = hashlib.sha256(body).hexdigest()
        msg = f"{method.decode('latin-1').upper()}\n{target.decode('latin-1')}\n{ts}\n{nonce}\n{digest}".encode("latin-1")
        sig = hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()
        keep = [l for l in lines[1:] if l.split(b":")[0].strip().lower() not in SIGNED + (b"connection",)]
        head = [lines[0]] + keep + [b"X-Meshkit-Key: " + kid.encode(), b"X-Meshkit-Timestamp: " + ts.encode(),
                                    b"X-Meshkit-Nonce: " + nonce.encode(), b"X-Meshkit-Signature: " + sig.encode(),
                                    b"Connection: close"]
        u = socket.create_connection((up_host, int(up_port)), timeout=30)
        try:
            u.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
            u.shutdown(socket.SHUT_WR)      # one request per connection; a long-poll claim sees a hung-up client
        except OSError:
            pass                            # answered early (e.g. 413): the answer is still to be read
        while True:
            try:
                data = u.recv(65536)
            except OSError:
                break
            if not data:
                break
            c.sendall(data)
        u.close()
    except OSError:
        pass
    finally:
        c.close()

s = socket.create_server(("127.0.0.1", 0))
print(f"http://127.0.0.1:{s.getsockname()[1]}", flush=True)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
EOF
mkfifo "$WORK/proxy.out"
python3 "$WORK/proxy.py" "$SUP" "$KEY" >"$WORK/proxy.out" 2>"$WORK/proxy.log" &
PROXY_PID=$!
exec 4<"$WORK/proxy.out"
read -r -t 10 PROXY <&4 || { echo "schemathesis: the signing proxy did not start"; cat "$WORK/proxy.log"; exit 1; }

# The proxy is the signing client: schemathesis leaves the security headers alone.
# A request refused as too large (413: a body over max_body, which generated bodies of 30 MB and more
# reach; 414: request line; 431: headers) is refused: schemathesis' default list for its
# negative_data_rejection check (ST201) leaves these statuses out, and counted such a 413 as
# "schema-violating request accepted". The document lists them for every operation.
cat >"$WORK/schemathesis.toml" <<'EOF'
[generation]
with-security-parameters = false

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "414", "415", "422", "428", "429", "431", "5xx"]
EOF
echo "schemathesis: $("$VENV/bin/schemathesis" --version) against $SUP (through the signing proxy $PROXY), up to ${MAX_TIME} s"
(cd "$WORK" && "$VENV/bin/schemathesis" --config-file "$WORK/schemathesis.toml" --no-color run "$PROXY/v1/openapi.json" --url "$PROXY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
  --phases examples,coverage,fuzzing --max-examples "${MESHKIT_ST_MAX_EXAMPLES:-40}" --max-time "$MAX_TIME" --request-timeout 20 \
  --workers 2 --seed "${MESHKIT_ST_SEED:-1}" --suppress-health-check all ${MESHKIT_ST_ARGS:-}) >"$WORK/st.log" 2>&1    # in $WORK: its .schemathesis/ cache goes with it
st_rc=$?
tail -n 40 "$WORK/st.log"; [ -n "${MESHKIT_ST_KEEP:-}" ] && echo "schemathesis: kept $WORK"
rc=0
if ! grep -q "SUMMARY" "$WORK/st.log"; then
  echo "schemathesis: did not complete (exit $st_rc)"; rc=1
fi
if grep -q "^Failures:" "$WORK/st.log" || grep -q "Network Error" "$WORK/st.log"; then
  rc=1
elif [ "$st_rc" != 0 ] && [ "$rc" = 0 ]; then
  # Only errors inside schemathesis/hypothesis themselves (e.g. "Runtime Error"): not the server's.
  echo "schemathesis: exit $st_rc from errors inside the tool, no failure of the server: not counted"
fi
if grep -q '"event":"internal_error"' "$WORK/supervisor.log"; then
  echo "schemathesis: the supervisor logged an internal error:"
  grep '"event":"internal_error"' "$WORK/supervisor.log" | head -n 3 | cut -c1-2000
  rc=1
fi
echo "schemathesis: $(grep -o '[0-9]* generated[^=]*' "$WORK/st.log" | tail -n 1); exit $rc"
exit $rc
