#!/usr/bin/env bash
# The trials behind the default catalog's threads and stream_interval for SmolLM2 (issue 18): each
# variant starts its own platform from catalogs/<variant>.yaml, one after another, nothing else running.
#   c32-<variant>: 32 streams, 64 requests, outputs 16-256; c1-<variant>: one stream, 10 requests.
#   A "-tp" suffix runs the same catalog with RAY_SERVE_THROUGHPUT_OPTIMIZED=1.
# Usage: benchmarks/smollm2-cpu-2core/defaults/run.sh c32-t2auto c1-t2auto ...   (from the repository root)
set -u
D=benchmarks/smollm2-cpu-2core/defaults M=smollm2-135m-instruct
for run in "$@"; do
  level=${run%%-*} variant=${run#*-}
  export RAY_SERVE_THROUGHPUT_OPTIMIZED=0
  [[ $variant == *-tp ]] && export RAY_SERVE_THROUGHPUT_OPTIMIZED=1
  if [[ $level == c32 ]]; then load=(--concurrency 32 --requests 64); else load=(--concurrency 1 --requests 10); fi
  llmaas bench --model $M --catalog "$D/catalogs/${variant%-tp}.yaml" --baselines "" "${load[@]}" \
    --output-min 16 --output-max 256 --out "$D/$run"
done
