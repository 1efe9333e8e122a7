# On the same GPU machine, still warm from call_scan.sh (it unpacked mamba-ssm in /tmp/site), with carry
# [".device"] after `bash bench/device/pack.sh models`:   COMMIT=<short sha> bash bench/device/call_models.sh
# Adds causal-conv1d (without it mamba-ssm's Mamba skips its fused path: an unfair baseline), then the block and the
# 130M LM step beside mamba-ssm (eager, and replayed as a CUDA graph), and `mambakit train text` beside the core step
# (with and without --cuda-graphs). About 4 minutes.
source bench/device/setup.sh
tar xJf .device/causal_conv1d_site.tar.xz -C /tmp/site
python3 -c "import mamba_ssm, causal_conv1d; print('mamba-ssm', mamba_ssm.__version__, 'causal-conv1d', causal_conv1d.__version__)" || exit 3
timeout 200 python3 bench/gpu_model.py --only block,train > "$OUT/gpu_model.txt" 2>&1
grep -E "block_fwd|lm_train" "$OUT/gpu_model.txt" | tail -20 | cut -c1-200
timeout 340 python3 bench/text_gpu.py --commit "$COMMIT" --out "$OUT" --profile-steps 10 > "$OUT/text_gpu.txt" 2>&1; tail -n 9 "$OUT/text_gpu.txt"
