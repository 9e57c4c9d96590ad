#!/usr/bin/env bash
# Lists the dependencies whose features differ between the workspace build
# (`cargo test --workspace --release`: every member, dev-dependencies included) and maturin's
# build of this crate alone (`cargo rustc -p tailor-python`). A difference there means cargo
# hashes that dependency differently and compiles it (and everything above it) a second time
# into target/release; python/Cargo.toml's "feature unification shims" exist to keep this
# list empty. Exits 1 when it is not. Reads Cargo.lock only (`cargo tree`); builds nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=$(rustc -vV | sed -n 's/^host: //p')
tree() { cargo tree --locked --target "$target" -f '{p}|{f}' --prefix none "$@" | sort -u; }
ws=$(tree --workspace -e normal,build,dev)
py=$(tree -p tailor-python -e normal,build)
python3 - "$ws" "$py" <<'PY'
import sys

def load(text):
    sets = {}
    for line in text.splitlines():
        line = line.replace(" (*)", "").strip()
        if "|" in line:
            pkg, feats = line.split("|", 1)
            sets.setdefault(pkg.split(" (")[0], set()).add(feats)
    return sets

ws, py = load(sys.argv[1]), load(sys.argv[2])
# A package built for the host (build scripts, proc macros) and for the target can carry two
# feature sets; each of tailor-python's must be one the workspace build has too.
bad = [(k, py[k] - ws.get(k, set())) for k in sorted(py) if py[k] - ws.get(k, set())]
for k, extra in bad:
    print(f"{k}: tailor-python alone builds it with {sorted(extra)}; the workspace with {sorted(ws.get(k, []))}")
print(f"{len(py)} dependencies of tailor-python, {len(bad)} with features the workspace build lacks")
sys.exit(1 if bad else 0)
PY
