# On the GPU machine (device tool, carry [".device"], after `bash bench/device/pack.sh scan`):
#   COMMIT=<short sha> bash bench/device/call_scan.sh
# The GPU tests of the scan and the fused mixer, bench/gpu.py's scan sections beside mamba-ssm, Nsight Compute on
# the cuda forward, and where one mixer's time goes (bench/gpu_profile.py --block: its kernels, the host's time by
# function, what makes the host wait). About 7 minutes: the GPU tests alone passed 200 s on an H100 at 006c84b.
source bench/device/setup.sh
timeout 270 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_step_graph.py tests/test_cuda_scan.py tests/test_mamba_inner.py \
    > "$OUT/gpu_tests.txt" 2>&1; tail -n 3 "$OUT/gpu_tests.txt"; grep -E "^FAILED" "$OUT/gpu_tests.txt" | head -10
timeout 150 python3 bench/gpu.py --skip-models --commit "$COMMIT" > "$OUT/gpu.txt" 2>&1; tail -n 22 "$OUT/gpu.txt"
timeout 90 ncu --clock-control none --profile-from-start off --set full -k regex:selective_scan -o "$OUT/scan" \
    python3 bench/gpu_profile.py --impls cuda_v2 > "$OUT/ncu_log.txt" 2>&1
ncu --import "$OUT/scan.ncu-rep" --page details > "$OUT/ncu_scan.txt" 2>&1
grep -E "^  void|Duration|Executed Instructions  |Issue Slots|bytes transmitted|bank" "$OUT/ncu_scan.txt" | cut -c1-120
# Why warps wait, per kernel: the stall reasons in cycles per issued instruction, largest first.
ncu --import "$OUT/scan.ncu-rep" --page raw --csv > "$OUT/ncu_scan_raw.csv" 2>&1 && rm "$OUT/scan.ncu-rep"
python3 - "$OUT/ncu_scan_raw.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
header, values = rows[0], rows[2:]
for row in values:
    name = row[header.index("Kernel Name")][:40]
    stalls = {h.split("issue_stalled_")[1].split("_per")[0]: float(v.replace(",", "")) for h, v in zip(header, row)
              if "issue_stalled_" in h and h.endswith("_per_issue_active.ratio") and v.replace(",", "").replace(".", "").isdigit()}
    print(name, " ".join(f"{k}={v:.2f}" for k, v in sorted(stalls.items(), key=lambda kv: -kv[1])[:8]))
PY
for backend in cuda triton; do
    timeout 60 python3 bench/gpu_profile.py --block --backend $backend > "$OUT/block_profile_$backend.txt" 2>&1
done
grep -h "^== mixer" "$OUT"/block_profile_*.txt; cut -c1-150 "$OUT/block_profile_cuda.txt" | head -60
