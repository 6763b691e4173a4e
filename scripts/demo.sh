#!/bin/sh
# The main job: runs a real, unmodified program (the openssl CLI) under the shim with the
# shipped default config, and shows what was protected: the arena's mappings in
# /proc/PID/smaps while it runs (locked, excluded from core dumps) and its counters at exit.
# usage: scripts/demo.sh BUILD_DIR
set -eu

build=$(cd "${1:-build}" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
shim="$build/libmemlock_shim.so"
config="$top/config/default.json"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

command -v openssl >/dev/null 2>&1 || {
    echo "demo: openssl is needed (apt-get install openssl)" >&2
    exit 1
}

# The default config, plus a stats file so the counters are written at exit.
python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))
c["stats"] = {"file": sys.argv[2] + "/stats.%p.json"}
json.dump(c, open(sys.argv[2] + "/config.json", "w"))' "$config" "$work"
# Check the derived config the way the shim will read it.
if [ -x "$build/memlock-run" ]; then
    "$build/memlock-run" --config "$work/config.json" --check >/dev/null
fi

echo "== memlock-shim demo: openssl under LD_PRELOAD=$shim"
echo "== config: $config"
cat "$config"
echo

# 1. A live process holding an HMAC key: openssl waits for its input on a FIFO.
key=$(openssl rand -hex 32)
mkfifo "$work/input"
LD_PRELOAD="$shim" MEMLOCK_SHIM_CONFIG="$work/config.json" \
    openssl dgst -sha256 -hmac "$key" < "$work/input" > "$work/mac" &
pid=$!
exec 3> "$work/input"
# Wait until openssl has set up its key and blocks reading its input: read(0, ...).
tries=0
until [ "$(cut -d' ' -f1,2 "/proc/$pid/syscall" 2>/dev/null)" = "0 0x0" ] || [ $tries -ge 200 ]; do
    tries=$((tries + 1))
    sleep 0.05
done
echo "== live: the protected memory of openssl (pid $pid), from /proc/$pid/smaps"
if [ -x "$build/memlock-inspect" ]; then
    "$build/memlock-inspect" "$pid" || true
else
    awk '/^[0-9a-f]+-[0-9a-f]+ / { range = $1 }
         /^Locked:/ { locked = $2 }
         /^VmFlags:/ { if ($0 ~ / lo/ && $0 ~ / dd/) printf "  %s  locked %s kB  flags:%s\n", range, locked, substr($0, 9) }' \
        "/proc/$pid/smaps"
fi
grep VmLck "/proc/$pid/status" | sed 's/^/  /'
echo "the message to authenticate" >&3
exec 3>&-
wait $pid
echo "  openssl output: $(cat "$work/mac")"
echo

# 2. A whole key generation, counted, started through the wrapper an entrypoint would use.
echo "== counted: memlock-run --config ... -- openssl genpkey RSA-2048"
"$build/memlock-run" --quiet --config "$work/config.json" -- \
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/key.pem" 2>/dev/null
stats=$(ls "$work"/stats.*.json | tail -n 1)
python3 - "$stats" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"  allocations served from the locked, never-dumped, wiped arena: {s['matched_allocations']}")
print(f"  freed (and wiped): {s['frees']}, peak arena bytes in use: {s['peak_bytes']}")
print(f"  locked: {s['locked_bytes']} bytes (max_locked {s['max_locked']}), "
      f"lock failures: {s['lock_failures']}, fallbacks: {s['fallbacks']}")
EOF
echo
echo "== the key was generated normally:"
openssl pkey -in "$work/key.pem" -noout -text 2>/dev/null | head -n 1 | sed 's/^/  /'
