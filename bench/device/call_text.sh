# On the GPU machine (device tool; no carry needed):   COMMIT=<short sha> bash bench/device/call_text.sh
# #13's bits per byte on the GPU, on `--corpus stdlib` (every .py of the machine's standard library, about 30 MB:
# 1,500 steps of 16 x 1,024 tokens are about one pass, where the 2.8 MB default corpus overfits;
# bench/results/text_cuda.md), the byte LM and a BPE LM beside xz -9e and zstd -19. About 8 minutes.
source bench/device/setup.sh
export PYTHONPATH=$PYTHONPATH:$PWD/bench  # text.py imports its sibling report.py
command -v zstd || echo "no zstd here: its row is left out"
timeout 560 python3 bench/text.py --corpus stdlib --device cuda --preset small --max-steps 1500 --eval-every 150 \
    --seq-len 1024 --commit "$COMMIT" --out "$OUT" > "$OUT/text_log.txt" 2>&1
echo "exit $?"; tail -n 14 "$OUT/text_log.txt" | cut -c1-200
