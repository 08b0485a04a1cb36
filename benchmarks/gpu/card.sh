# Sourced by the device scripts: the measured commit ($1), the import path of the checkout's
# packages and test helpers, the card's name ($card) and short name for file names ($gpu), and
# the start time ($start) the scripts' progress lines count from.
set -uo pipefail
sha=${1:?git sha of the measured commit}
export PYTHONPATH=$(pwd)/packages/tq-core/src:$(pwd)/integration-tests/conformance:$(pwd)/integration-tests/compat
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
gpu=$(echo "$card" | grep -q H200 && echo h200 || echo h100)
echo "$card"
start=$(date +%s)
