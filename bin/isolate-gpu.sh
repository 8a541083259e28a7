#!/bin/sh
# Runs Node with only GPU $DISTILL_GPU_INDEX visible to the GPU driver: in a private mount namespace, the device
# nodes of the other NVIDIA GPUs are replaced by /dev/null. Vulkan (and so WebGPU through Dawn) ignores
# CUDA_VISIBLE_DEVICES and Dawn picks adapters by name only, so this is how a webgpu worker gets its own GPU on one
# host; Slurm and Kubernetes do the same with cgroups and device plugins. Used by src/runtime/gpuIsolation.ts.
exec unshare -m sh -c '
  for d in /dev/nvidia[0-9]*; do
    [ "$d" = "/dev/nvidia$DISTILL_GPU_INDEX" ] || mount --bind /dev/null "$d" || exit 97
  done
  exec "$DISTILL_NODE" "$@"' sh "$@"
