#!/usr/bin/env bash
# Launches one training run on every host of a Cloud TPU pod slice:
#   launch/tpu_pod.sh my-tpu us-central2-b --config=configs/promag_4x.py --workdir=gs://bucket/promag_4x
# The repository must be present at the same path on every host (e.g. cloned by a startup script).
# For a real corpus, decode the videos once into clip shards (on any machine with many cores),
# then point every host at them:
#   python -m bootvae_jax.data.prepare --input=/data/videos --out=gs://bucket/clips_33x288 \
#       --num_frames=33 --size=288 --workers=32
#   launch/tpu_pod.sh my-tpu us-central2-b --config=configs/promag_4x.py --workdir=gs://bucket/promag_4x \
#       --config.data.source=array_record --config.data.path=gs://bucket/clips_33x288
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; shift 2
args=$(printf " %q" "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd ~/bootvae_jax && python3 -m bootvae_jax.main --distributed${args}"
