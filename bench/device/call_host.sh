# On the GPU machine (device tool, carry [".device"] after `bash bench/device/pack.sh scan`), about 2 minutes:
#   bash bench/device/call_host.sh; PHASE=runs TASKS=... LIMIT=$((585 - SECONDS)) bash bench/device/call_capabilities.sh
# The GPU tests of CUDA-graph steps and the hybrid models (never run on a GPU yet), then where the mixer's host time
# goes: the host's time per call of each layer of a scan forward (bench/gpu_profile.py --host-costs), and the
# mixer's kernels, host time by function and host waits for the cuda and triton scans (--block).
source bench/device/setup.sh
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_step_graph.py tests/test_hybrid.py \
    > "$OUT/gpu_tests.txt" 2>&1; tail -n 2 "$OUT/gpu_tests.txt"; grep -E "^FAILED" "$OUT/gpu_tests.txt" | head -5
timeout 40 python3 bench/gpu_profile.py --host-costs > "$OUT/host_costs.txt" 2>&1; grep "^== host" "$OUT/host_costs.txt"
for backend in cuda triton; do
    timeout 45 python3 bench/gpu_profile.py --block --backend $backend > "$OUT/block_profile_$backend.txt" 2>&1
done
grep -h "^== mixer.*host [0-9]" "$OUT"/block_profile_*.txt
sed -n '/forward: host time by function/,/host waits/p' "$OUT/block_profile_cuda.txt" | cut -c1-150 | head -24
