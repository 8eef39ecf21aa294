#!/usr/bin/env bash
# Launches one training run on every host of a Cloud TPU pod slice:
#   launch/tpu_pod.sh my-tpu us-central2-b --config=configs/promag_4x.py --workdir=gs://bucket/promag_4x
# The repository must be present at the same path on every host (e.g. cloned by a startup script).
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; shift 2
args=$(printf " %q" "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd ~/bootvae_jax && python3 -m bootvae_jax.main --distributed${args}"
