# On the GPU machine (device tool, carry [".device"]; mamba-ssm from `bash bench/device/pack.sh scan`, unpacked by
# call_scan.sh when it ran first on the same warm machine), one of:
#   PHASE=probe bash bench/device/call_capabilities.sh
#       the step time of the GPU tier's runs, eager and as a CUDA graph (bench/capabilities_step_profile.py),
#       then the tier's induction-heads Mamba run cut to 4,000 steps (the budget that held 100% only to 2^11), its
#       checkpoint evaluated past the training length under bf16 autocast and in fp32 (budget or bf16?). About
#       6 minutes (a call of its own: with call_scan.sh it would pass the 10-minute limit).
#   PHASE=runs TASKS=a,b [MODELS=x,y] [JOBS=4] [LIMIT=540] [EAGER=1] bash bench/device/call_capabilities.sh
#   (either, with GPU_TESTS="tests/test_x.py ...": those GPU tests first, under a 150 s limit)
#       `mambakit bench capabilities --tier gpu` for those runs under `timeout LIMIT` (graphed steps, the tier's
#       default on a GPU; EAGER=1: --no-cuda-graphs); capabilities.json/.md and
#       every run's metrics.jsonl come back in $OUT/cap, also when a limit stops it.
source bench/device/setup.sh
[ -n "$GPU_TESTS" ] && { timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS > "$OUT/gpu_tests.txt" 2>&1;
    tail -n 3 "$OUT/gpu_tests.txt"; grep -E "^FAILED" "$OUT/gpu_tests.txt" | head -10; }
case "$PHASE" in
probe)
    timeout 200 python3 bench/capabilities_step_profile.py --out "$OUT/step_profile.json" --runs \
        selective-copying--mamba,selective-copying--mamba-lti,induction-heads--mamba,mqar--mambaformer-d64,mqar-hard--mamba-d128,copying--mamba,copying--mambaformer,icl-sparse-parity--mamba \
        2>&1 | grep "^{" | cut -c1-220
    timeout 150 python3 -m mambakit bench capabilities --tier gpu --tasks induction-heads --models mamba \
        --steps-factor 0.15625 --out /tmp/probe > "$OUT/probe_induction.txt" 2>&1; grep "induction-heads | mamba" "$OUT/probe_induction.txt"
    for precision in bf16 fp32; do
        timeout 60 python3 -m mambakit eval synthetic -c /tmp/probe/runs/induction-heads--mamba/last \
            --lengths 2048,4096,8192,16384,65536 --batch-size 64 --precision $precision 2>&1 | grep -E "^\(length|│ accuracy" | paste - - | sed "s/^/$precision /"
    done
    ;;
runs)
    # Into $OUT as they finish (capabilities.json is rewritten after every run): a call cut short by the session's
    # device time still brings back the runs it finished.
    timeout "${LIMIT:-540}" python3 -m mambakit bench capabilities --tier gpu --tasks "$TASKS" \
        ${MODELS:+--models "$MODELS"} ${EAGER:+--no-cuda-graphs} --jobs "${JOBS:-4}" --out "$OUT/cap" > "$OUT/capabilities_log.txt" 2>&1
    echo "exit $?"; tail -n 40 "$OUT/capabilities_log.txt" | grep -v "^$" | cut -c1-200
    find "$OUT/cap/runs" -mindepth 1 -maxdepth 1 -type d -exec sh -c 'mv "$1/metrics.jsonl" "$1.metrics.jsonl"; rm -rf "$1"' _ {} \; 2>/dev/null
    ;;
*) echo "PHASE=probe or PHASE=runs" >&2; exit 2 ;;
esac
