# Two CPU checks behind choices in the capability suite's GPU tier (bench/results/capabilities.md, last section),
# through `mambakit train synthetic`; each run's training loss is in OUT/<run>/metrics.jsonl and its validation
# accuracy is printed at the end.
#   bash bench/capabilities_cpu_checks.sh heads [OUT]   MQAR at the CPU tier's size, MambaFormer with 8 heads and
#                                                       with 1 (the attention baseline's); two runs at once, ~1 min
#   bash bench/capabilities_cpu_checks.sh icl-lr [OUT]  the GPU tier's vector-MQAR Transformer, 3,000 steps at lr
#                                                       2e-4 (the tier's) and 1e-3; two runs at once, ~14 min
set -e
out=${2:-runs/capability_checks}
mkdir -p "$out"
export OMP_NUM_THREADS=1
run() {  # run NAME CONFIG-TEXT FLAGS...
    local name=$1 config=$2; shift 2
    printf '%s\n' "$config" > "$out/$name.yaml"
    mambakit train synthetic --device cpu --seed 0 --config "$out/$name.yaml" --out "$out/$name" "$@" \
        > "$out/$name.log" 2>&1
    echo "$name: $(grep -E "│ accuracy " "$out/$name.log" | tail -n 1)"
}
case "${1:-}" in
heads)
    for heads in 8 1; do
        run "mqar-mambaformer-h$heads" "model: {d_model: 64, n_layer: 2, d_state: 8, attn_num_heads: $heads, d_intermediate: 0}
train: {weight_decay: 0.1, eval_every: 600, save_every: 600, log_every: 60}" \
            --task mqar --model mambaformer --positions learned --length 64 --vocab 256 --count 8 \
            --max-steps 600 --batch-size 32 --lr 3e-3 &
    done
    wait
    ;;
icl-lr)
    for lr in 2e-4 1e-3; do
        run "icl-vector-mqar-transformer-lr$lr" "model: {d_model: 128, n_layer: 2, d_state: 16, attn_num_heads: 8}
train: {weight_decay: 0.0, max_grad_norm: 100.0, eval_every: 3000, save_every: 3000, log_every: 300}" \
            --task icl-vector-mqar --model transformer --positions learned --vocab 20 --count 32 \
            --max-steps 3000 --batch-size 64 --lr "$lr" &
    done
    wait
    ;;
*) echo "usage: bash bench/capabilities_cpu_checks.sh heads|icl-lr [OUT]" >&2; exit 2 ;;
esac
