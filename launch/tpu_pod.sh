#!/usr/bin/env bash
# Launches one training run on every host of a Cloud TPU pod slice:
#   launch/tpu_pod.sh my-tpu us-central2-b --config=configs/promag_4x.py --workdir=gs://bucket/promag_4x
# The repository must be present at the same path on every host (e.g. cloned by a startup script).
#
# Before anything starts on the pod, the train step is compiled here for the slice's TPU type
# (python -m bootvae_jax.aot, needs libtpu: pip install -r requirements-test.txt) and the launch
# stops with the shortfall when it does not fit the chips' HBM (--memory_only: the compiler's
# memory assignment, minutes; a full compile of a paper-scale step can take far longer on a
# small machine). NUM_SLICES=N checks N slices joined over DCN; SKIP_FIT_CHECK=1 skips it.
#
# For a real corpus, decode the videos once into clip shards (on any machine with many cores),
# then point every host at them:
#   python -m bootvae_jax.data.prepare --input=/data/videos --out=gs://bucket/clips_33x288 \
#       --num_frames=33 --size=288 --workers=32
#   launch/tpu_pod.sh my-tpu us-central2-b --config=configs/promag_4x.py --workdir=gs://bucket/promag_4x \
#       --config.data.source=array_record --config.data.path=gs://bucket/clips_33x288
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; shift 2
args=$(printf " %q" "$@")

if [[ -z ${SKIP_FIT_CHECK:-} ]]; then
  accelerator=$(gcloud compute tpus tpu-vm describe "$tpu" --zone="$zone" \
    --format='value(acceleratorType)')
  topology=${accelerator/v5litepod/v5e}  # Cloud's v5litepod-16 is the v5e-16 slice
  fit_args=()
  for arg in "$@"; do  # the config and its overrides; --workdir and the like are not needed
    case $arg in --config=* | --config.*) fit_args+=("$arg") ;; esac
  done
  echo "fit check: ${fit_args[*]} on ${NUM_SLICES:-1} x $topology"
  JAX_PLATFORMS=cpu python3 -m bootvae_jax.aot --topology="$topology" \
    --num_slices="${NUM_SLICES:-1}" --steps=train --memory_only "${fit_args[@]}" || {
    status=$?
    echo "not launched: the fit check failed (exit $status; 3 = does not fit)" >&2
    exit "$status"
  }
fi

gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd ~/bootvae_jax && python3 -m bootvae_jax.main --distributed${args}"
