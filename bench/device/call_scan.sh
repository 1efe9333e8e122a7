# On the GPU machine (device tool, carry [".device"], after `bash bench/device/pack.sh scan`):
#   COMMIT=<short sha> bash bench/device/call_scan.sh
# The GPU tests of the scan and the fused mixer, bench/gpu.py's scan sections beside mamba-ssm, Nsight Compute on
# the cuda forward, and where one mixer's time goes (bench/gpu_profile.py --block). About 6 minutes.
mkdir -p /tmp/site && { [ -d /tmp/site/mamba_ssm ] || tar xJf .device/mamba_site.tar.xz -C /tmp/site; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; ln -sfn "$PWD/apps" mambakit/apps
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_scan.py tests/test_mamba_inner.py \
    > "$OUT/gpu_tests.txt" 2>&1; tail -n 3 "$OUT/gpu_tests.txt"; grep -E "^FAILED" "$OUT/gpu_tests.txt" | head -10
timeout 150 python3 bench/gpu.py --skip-models --commit "$COMMIT" > "$OUT/gpu.txt" 2>&1; tail -n 22 "$OUT/gpu.txt"
timeout 60 ncu --clock-control none --profile-from-start off --section SpeedOfLight --section WarpStateStats \
    --section MemoryWorkloadAnalysis_Tables --section InstructionStats --section Occupancy -k regex:selective_scan_fwd \
    python3 bench/gpu_profile.py --impls cuda_v2 > "$OUT/ncu_fwd.txt" 2>&1
grep -E "Duration|Executed Instructions  |Issue Slots|bytes transmitted|bank" "$OUT/ncu_fwd.txt" | head
timeout 60 python3 bench/gpu_profile.py --block --backend cuda > "$OUT/block_profile.txt" 2>&1
cut -c1-150 "$OUT/block_profile.txt" | head -60
