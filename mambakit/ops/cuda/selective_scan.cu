// Selective scan forward (Mamba's S6), header-free CUDA C++ compiled at run time by NVRTC (mambakit/ops/nvrtc.py).
//
//   h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,   y_t = C_t h_t + D u_t,   out_t = y_t * silu(z_t)
//
// Layout (../shared/notes/kernel_strategy.md section 8): a CTA is kChannels warps, one channel each, of one batch
// element and one B/C group; a warp walks the sequence in chunks of 32 lanes x kItems consecutive steps, carrying
// the state from chunk to chunk in registers. The group's B and C for a chunk are staged once per CTA in shared
// memory and read by all its channels. Per state n: a_i = exp2(delta_i A_n log2 e) and b_i = delta_i u_i B_n,i
// (one exp per element-state); pass 1 folds a lane's items from a zero state; a 5-level shuffle scan composes the
// lanes' (decay, state) pairs; pass 2 re-runs the items from the state entering the lane and accumulates C h.
// A lane's decay over its items is exp2(A_n log2 e * sum delta): one exp instead of a product chain.
//
// Template parameters: kDtype (0 fp32, 1 bf16, 2 fp16) of u, delta, z and out; kStates (N); kItems (steps per
// lane); kChannels (warps per CTA); flags for z, D, delta_bias, softplus, an initial state, the last state and
// the start states that the backward needs; kSaveEvery, the steps between those saved states: the backward's
// chunk (where it is shorter than this kernel's, the lanes whose items start one save the state entering them);
// and kInFlight, the states a warp scans at once.
// B and C come as fp32 (batch, groups, N, L) with unit stride in L.

typedef unsigned short u16;

template <int kDtype> __device__ __forceinline__ float from_bits(u16 bits) {
    if (kDtype == 1) return __uint_as_float(static_cast<unsigned int>(bits) << 16);
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
}

template <int kDtype> __device__ __forceinline__ u16 to_bits(float value) {
    u16 bits;
    if (kDtype == 1) {
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    } else {
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    }
    return bits;
}

template <int kDtype> __device__ __forceinline__ float to_float(const void* base, long long index) {
    if (kDtype == 0) return static_cast<const float*>(base)[index];
    return from_bits<kDtype>(static_cast<const u16*>(base)[index]);
}

template <int kDtype> __device__ __forceinline__ void store(void* base, long long index, float value) {
    if (kDtype == 0) {
        static_cast<float*>(base)[index] = value;
        return;
    }
    static_cast<u16*>(base)[index] = to_bits<kDtype>(value);
}

// A lane's kItems consecutive steps from index `start` of `base`, 0 from the `valid`-th on: 16-byte loads when all
// are valid and the address is aligned (a warp then reads whole contiguous lines), else one step at a time.
template <int kDtype, int kItems>
__device__ __forceinline__ void load_items(const void* base, long long start, int valid, float (&values)[kItems]) {
    constexpr int kBytes = kDtype == 0 ? 4 : 2;
    const char* address = static_cast<const char*>(base) + start * kBytes;
    if ((kItems * kBytes) % 16 == 0 && valid >= kItems && reinterpret_cast<unsigned long long>(address) % 16 == 0) {
#pragma unroll
        for (int v = 0; v < kItems * kBytes / 16; ++v) {
            const uint4 word = reinterpret_cast<const uint4*>(address)[v];
            const unsigned int parts[4] = {word.x, word.y, word.z, word.w};
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                if (kDtype == 0) {
                    values[4 * v + w] = __uint_as_float(parts[w]);
                } else {
                    values[8 * v + 2 * w] = from_bits<kDtype>(static_cast<u16>(parts[w] & 0xffffu));
                    values[8 * v + 2 * w + 1] = from_bits<kDtype>(static_cast<u16>(parts[w] >> 16));
                }
            }
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) values[i] = i < valid ? to_float<kDtype>(base, start + i) : 0.f;
}

// The store that matches load_items: the first `valid` (at most kItems) steps from index `start`.
template <int kDtype, int kItems>
__device__ __forceinline__ void store_items(void* base, long long start, int valid, const float (&values)[kItems]) {
    constexpr int kBytes = kDtype == 0 ? 4 : 2;
    char* address = static_cast<char*>(base) + start * kBytes;
    if ((kItems * kBytes) % 16 == 0 && valid >= kItems && reinterpret_cast<unsigned long long>(address) % 16 == 0) {
#pragma unroll
        for (int v = 0; v < kItems * kBytes / 16; ++v) {
            unsigned int parts[4];
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                parts[w] = kDtype == 0 ? __float_as_uint(values[4 * v + w])
                                       : static_cast<unsigned int>(to_bits<kDtype>(values[8 * v + 2 * w])) |
                                             (static_cast<unsigned int>(to_bits<kDtype>(values[8 * v + 2 * w + 1])) << 16);
            }
            reinterpret_cast<uint4*>(address)[v] = make_uint4(parts[0], parts[1], parts[2], parts[3]);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
        if (i < valid) store<kDtype>(base, start + i, values[i]);
    }
}

__device__ __forceinline__ float softplus(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }

// The state entering this lane's items, from each lane's (decay over its items, state from a zero start) and the
// state `carry` before its group: an inclusive shuffle scan of the pairs under
// (d1, h1) o (d2, h2) = (d1 d2, d2 h1 + h2) within each group of kWidth consecutive lanes (`segment` is the lane's
// place in its group), shifted by one lane. The whole group's pair goes to chunk_decay, chunk_state (its last
// lane's inclusive value).
template <int kWidth = 32>
__device__ __forceinline__ float entering_state(float decay, float h, float carry, int segment, float& chunk_decay,
                                                float& chunk_state) {
#pragma unroll
    for (int offset = 1; offset < kWidth; offset *= 2) {
        if constexpr (kWidth == 32) {
            // Whole warps (the forward): each level's shuffle says itself whether lane - offset exists (shfl's
            // predicate output), so no comparison of `segment` is issued per level and state: 102 -> 96
            // instructions in the forward's state loop. (In backward v2's groups of 4 lanes ptxas then spilled.)
            asm("{\n\t.reg .pred inside;\n\t.reg .f32 decay_before, h_before;\n\t"
                "shfl.sync.up.b32 decay_before|inside, %0, %2, 0, -1;\n\t"
                "shfl.sync.up.b32 h_before, %1, %2, 0, -1;\n\t"
                "@inside fma.rn.ftz.f32 %1, %0, h_before, %1;\n\t"
                "@inside mul.rn.ftz.f32 %0, %0, decay_before;\n\t}"
                : "+f"(decay), "+f"(h)
                : "r"(offset));
        } else {
            const float decay_before = __shfl_up_sync(0xffffffffu, decay, offset, kWidth);
            const float h_before = __shfl_up_sync(0xffffffffu, h, offset, kWidth);
            if (segment >= offset) {
                h = decay * h_before + h;
                decay = decay * decay_before;
            }
        }
    }
    float decay_in = __shfl_up_sync(0xffffffffu, decay, 1, kWidth);
    float h_in = __shfl_up_sync(0xffffffffu, h, 1, kWidth);
    if (segment == 0) {
        decay_in = 1.f;
        h_in = 0.f;
    }
    chunk_decay = __shfl_sync(0xffffffffu, decay, kWidth - 1, kWidth);
    chunk_state = __shfl_sync(0xffffffffu, h, kWidth - 1, kWidth);
    return decay_in * carry + h_in;
}

// The adjoint at the step after this lane's last item, from each lane's (product of the decays its items' adjoints
// are multiplied by, adjoint from a zero end) and the adjoint `carry` after its group: an inclusive suffix shuffle
// scan of the pairs under (p1, v1) o (p2, v2) = (p1 p2, v1 + p1 v2) within each group of kWidth lanes, shifted by
// one lane.
template <int kWidth = 32>
__device__ __forceinline__ float entering_adjoint(float product, float value, float carry, int segment) {
#pragma unroll
    for (int offset = 1; offset < kWidth; offset *= 2) {
        const float value_after = __shfl_down_sync(0xffffffffu, value, offset, kWidth);
        const float product_after = __shfl_down_sync(0xffffffffu, product, offset, kWidth);
        if (segment + offset < kWidth) {
            value = value + product * value_after;
            product = product * product_after;
        }
    }
    float product_next = __shfl_down_sync(0xffffffffu, product, 1, kWidth);
    float value_next = __shfl_down_sync(0xffffffffu, value, 1, kWidth);
    if (segment == kWidth - 1) {
        product_next = 1.f;
        value_next = 0.f;
    }
    return product_next * carry + value_next;
}

// B and C of a chunk in shared memory: a lane's kItems steps (its segment of the chunk) are read as float4s, and
// the lanes' k-th float4s lie side by side, so the 32 lanes of a warp read distinct banks.
template <int kItems, int kSegments> __device__ __forceinline__ int staged_position(int step) {
    const int segment = step / kItems, item = step % kItems;
    return (item / 4) * (4 * kSegments) + segment * 4 + item % 4;
}

template <int kItems, int kSegments>
__device__ __forceinline__ void load_staged(const float* row, int segment, float (&values)[kItems]) {
#pragma unroll
    for (int quarter = 0; quarter < kItems / 4; ++quarter) {
        const float4 four = reinterpret_cast<const float4*>(row)[quarter * kSegments + segment];
        values[4 * quarter] = four.x;
        values[4 * quarter + 1] = four.y;
        values[4 * quarter + 2] = four.z;
        values[4 * quarter + 3] = four.w;
    }
}

// One quad (four consecutive steps from t) of a state's B and C row, at `at` in the global rows, into shared memory
// at `position`: one 16-byte load each where the rows allow it (`whole`), else step by step with 0 past the end.
__device__ __forceinline__ void stage_quad(const float* B_rows, const float* C_rows, long long at, int t, int length,
                                           bool whole, float* shared_B, float* shared_C, int position) {
    float4 b, c;
    if (whole) {
        b = *reinterpret_cast<const float4*>(B_rows + at);
        c = *reinterpret_cast<const float4*>(C_rows + at);
    } else {
        float b_steps[4], c_steps[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            b_steps[k] = t + k < length ? B_rows[at + k] : 0.f;
            c_steps[k] = t + k < length ? C_rows[at + k] : 0.f;
        }
        b = make_float4(b_steps[0], b_steps[1], b_steps[2], b_steps[3]);
        c = make_float4(c_steps[0], c_steps[1], c_steps[2], c_steps[3]);
    }
    *reinterpret_cast<float4*>(shared_B + position) = b;
    *reinterpret_cast<float4*>(shared_C + position) = c;
}

// A chunk's B and C (kStates rows of kChunk = kSegments x kItems steps from chunk_start, 0 past the end) into shared
// memory in staged_position order, by all kThreads threads of the CTA. Four consecutive steps are one float4 in
// both places (kItems % 4 == 0), read with one 16-byte load where the row allows it. Thread i of a group of
// kGroup x kQuarters takes quarter (i / kGroup) of segment (i % kGroup): the group reads kGroup whole segments
// (contiguous steps), and each run of kGroup threads (at most 8: one 128-byte phase of a shared store) writes
// kGroup side-by-side float4s, which lie in distinct banks. Where the CTA's threads are a whole number of rows'
// quads, a thread takes the same place in every row it stages, so its step, its shared position and the bounds
// check are worked out once, not per quad (in the forward that was 40 of a quad's 56 instructions).
template <int kStates, int kItems, int kSegments, int kThreads>
__device__ __forceinline__ void stage_chunk(const float* B_rows, const float* C_rows, int length, int chunk_start,
                                            float* shared_B, float* shared_C) {
    constexpr int kChunk = kSegments * kItems;
    constexpr int kRowQuads = kChunk / 4;
    constexpr int kQuarters = kItems / 4;
    constexpr int kGroup = kSegments < 8 ? kSegments : 8;
    static_assert(kSegments % kGroup == 0, "whole groups of segments");
    const bool aligned = length % 4 == 0 && reinterpret_cast<unsigned long long>(B_rows) % 16 == 0 &&
                         reinterpret_cast<unsigned long long>(C_rows) % 16 == 0;
    const auto step_of = [](int in_row) {
        const int segment = in_row % kGroup + kGroup * (in_row / (kGroup * kQuarters));
        return segment * kItems + 4 * ((in_row / kGroup) % kQuarters);
    };
    if constexpr (kThreads % kRowQuads == 0) {
        constexpr int kRowsAtOnce = kThreads / kRowQuads;
        const int first_row = threadIdx.x / kRowQuads;
        const int step = step_of(threadIdx.x % kRowQuads), t = chunk_start + step;
        const bool whole = aligned && t + 4 <= length;
        int position = first_row * kChunk + staged_position<kItems, kSegments>(step);
        long long at = first_row * (long long)length + t;
        const long long rows_apart = kRowsAtOnce * (long long)length;
#pragma unroll 1
        for (int n = first_row; n < kStates; n += kRowsAtOnce, at += rows_apart, position += kRowsAtOnce * kChunk) {
            stage_quad(B_rows, C_rows, at, t, length, whole, shared_B, shared_C, position);
        }
    } else {
        for (int quad = threadIdx.x; quad < kStates * kRowQuads; quad += kThreads) {
            const int n = quad / kRowQuads, step = step_of(quad % kRowQuads), t = chunk_start + step;
            stage_quad(B_rows, C_rows, n * (long long)length + t, t, length, aligned && t + 4 <= length, shared_B,
                       shared_C, n * kChunk + staged_position<kItems, kSegments>(step));
        }
    }
}

// Launch bounds of 4 CTAs an SM: without them ptxas held the forward to 64 registers and spilled.
template <int kDtype, int kStates, int kItems, int kChannels, bool kHasZ, bool kHasD, bool kHasDeltaBias,
          bool kSoftplus, bool kHasInitialState, bool kReturnLastState, bool kSaveChunkStates, int kSaveEvery,
          int kInFlight>
__global__ void __launch_bounds__(kChannels * 32, 4) selective_scan_fwd(
    const void* __restrict__ u, const void* __restrict__ delta, const float* __restrict__ A,
    const float* __restrict__ B, const float* __restrict__ C, const float* __restrict__ D,
    const void* __restrict__ z, const float* __restrict__ delta_bias, const float* __restrict__ initial_state,
    void* __restrict__ out, float* __restrict__ last_state, float* __restrict__ chunk_states, int dim, int length,
    int channels_per_group,
    long long u_batch_stride, long long u_dim_stride, long long delta_batch_stride, long long delta_dim_stride,
    long long z_batch_stride, long long z_dim_stride, long long out_batch_stride, long long out_dim_stride,
    long long bc_batch_stride, long long bc_group_stride) {
    constexpr int kChunk = 32 * kItems;
    constexpr float kLog2e = 1.4426950408889634f;
    static_assert(kSaveEvery % kItems == 0 && kChunk % kSaveEvery == 0, "saved states start a lane's items");
    static_assert(kItems % 4 == 0, "a lane reads its B and C as float4s");
    static_assert(kStates % kInFlight == 0, "the states go in groups of kInFlight");
    // Saved states a chunk holds where the backward's chunk is shorter (each lane starting one saves the state
    // entering it): gathered per warp in shared memory, rows padded by one, and written out together. One more row
    // takes the stores of the lanes that save nothing, so that every lane stores and the state loop has no branch.
    constexpr int kSavesPerChunk = kSaveChunkStates && kSaveEvery < kChunk ? kChunk / kSaveEvery : 0;
    constexpr int kSaveRows = kSavesPerChunk > 0 ? kSavesPerChunk + 1 : 0;
    constexpr int kSavePitch = kStates + 1;
    // Shared: B then C of the chunk (2 x kStates x kChunk floats, in staged_position order), then per warp A log2(e)
    // and the carried state of each state n (2 x kStates floats; the state loop indexes them with a run-time n,
    // which registers cannot take without a local-memory stack frame) and the chunk's saved states.
    extern __shared__ __align__(16) float shared[];
    float* shared_B = shared;
    float* shared_C = shared + kStates * kChunk;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* A_log2 = shared + 2 * kStates * kChunk + warp * (2 * kStates + kSaveRows * kSavePitch);
    float* carry = A_log2 + kStates;  // written by lane 0, read by every lane
    float* chunk_saves = carry + kStates;
    const int batch = blockIdx.y;
    const int channel = blockIdx.x * kChannels + warp;
    const bool active = channel < dim;
    // Every channel of a CTA is in one group: the launcher makes kChannels divide channels_per_group.
    const int group = (blockIdx.x * kChannels) / channels_per_group;
    const float* B_rows = B + batch * bc_batch_stride + group * bc_group_stride;
    const float* C_rows = C + batch * bc_batch_stride + group * bc_group_stride;

    if (lane == 0) {
        for (int n = 0; n < kStates; ++n) {
            A_log2[n] = active ? A[channel * kStates + n] * kLog2e : 0.f;
            carry[n] = (kHasInitialState && active) ? initial_state[(batch * (long long)dim + channel) * kStates + n] : 0.f;
        }
    }
    __syncwarp();
    const float D_value = (kHasD && active) ? D[channel] : 0.f;
    const float bias = (kHasDeltaBias && active) ? delta_bias[channel] : 0.f;

    const long long u_row = batch * u_batch_stride + channel * u_dim_stride;
    const long long delta_row = batch * delta_batch_stride + channel * delta_dim_stride;
    const long long z_row = batch * z_batch_stride + channel * z_dim_stride;
    const long long out_row = batch * out_batch_stride + channel * out_dim_stride;

    const int saves = (length + kSaveEvery - 1) / kSaveEvery;
    for (int chunk_start = 0; chunk_start < length; chunk_start += kChunk) {
        // The backward rebuilds each of its chunks from its start state.
        if (kSaveChunkStates && kSaveEvery == kChunk && active && lane == 0) {
            float* saved = chunk_states + ((batch * (long long)dim + channel) * saves + chunk_start / kChunk) * kStates;
            for (int n = 0; n < kStates; ++n) saved[n] = carry[n];
        }
        __syncthreads();  // the previous chunk's B/C reads are done
        stage_chunk<kStates, kItems, 32, kChannels * 32>(B_rows, C_rows, length, chunk_start, shared_B, shared_C);
        __syncthreads();

        // Steps past the end get delta 0 and u 0: decay 1 and no input, so the carried state passes unchanged.
        const int first = chunk_start + lane * kItems;
        const int valid = active ? min(length - first, kItems) : 0;
        // Where this lane puts the state entering its items: its save's row if its items start a save, else the
        // discarded row (never a null pointer: one that may be null is a generic address, which ptxas converted to
        // a shared one in every iteration of the state loop).
        const int save_row = (lane * kItems) % kSaveEvery == 0 ? lane * kItems / kSaveEvery : kSavesPerChunk;
        float* const save_to = chunk_saves + save_row * kSavePitch;
        float dt[kItems], dtu[kItems], u_values[kItems], y[kItems];
        load_items<kDtype, kItems>(u, u_row + first, valid, u_values);
        load_items<kDtype, kItems>(delta, delta_row + first, valid, dt);
        float dt_sum = 0.f;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            float dt_i = i < valid ? dt[i] + bias : 0.f;
            if (kSoftplus && i < valid) dt_i = softplus(dt_i);
            dt[i] = dt_i;
            dtu[i] = dt_i * u_values[i];
            y[i] = 0.f;
            dt_sum += dt_i;
        }

#pragma unroll 1
        for (int first_state = 0; first_state < kStates; first_state += kInFlight) {
            // kInFlight states at once: their lane scans are independent, so their shuffles overlap.
            float a[kInFlight][kItems], b[kInFlight][kItems], state[kInFlight];
#pragma unroll
            for (int s = 0; s < kInFlight; ++s) {
                const int n = first_state + s;
                const float A_n = A_log2[n], carry_n = carry[n];  // read before lane 0 replaces carry[n] below
                load_staged<kItems, 32>(shared_B + n * kChunk, lane, b[s]);
                float h = 0.f;  // pass 1: this lane's items from a zero state
#pragma unroll
                for (int i = 0; i < kItems; ++i) {
                    a[s][i] = exp2f(dt[i] * A_n);
                    b[s][i] *= dtu[i];
                    h = fmaf(a[s][i], h, b[s][i]);
                }
                float chunk_decay, chunk_h;
                state[s] = entering_state(exp2f(dt_sum * A_n), h, carry_n, lane, chunk_decay, chunk_h);
                if (lane == 0) carry[n] = chunk_decay * carry_n + chunk_h;
                if (kSavesPerChunk > 0) save_to[n] = state[s];
            }
#pragma unroll
            for (int s = 0; s < kInFlight; ++s) {
                float C_n[kItems];
                load_staged<kItems, 32>(shared_C + (first_state + s) * kChunk, lane, C_n);
#pragma unroll
                for (int i = 0; i < kItems; ++i) {  // pass 2: from the entering state, with the outputs
                    state[s] = fmaf(a[s][i], state[s], b[s][i]);
                    y[i] = fmaf(C_n[i], state[s], y[i]);
                }
            }
        }

        if (kSavesPerChunk > 0 && active) {
            __syncwarp();  // every lane's saves are in chunk_saves
            const int first_save = chunk_start / kSaveEvery;
            const int count = min(kSavesPerChunk, saves - first_save) * kStates;
            float* saved = chunk_states + ((batch * (long long)dim + channel) * saves + first_save) * kStates;
            for (int e = lane; e < count; e += 32) saved[e] = chunk_saves[(e / kStates) * kSavePitch + e % kStates];
        }
        if (kHasD) {
#pragma unroll
            for (int i = 0; i < kItems; ++i) y[i] = fmaf(D_value, u_values[i], y[i]);
        }
        if (kHasZ) {
            float z_values[kItems];
            load_items<kDtype, kItems>(z, z_row + first, valid, z_values);
#pragma unroll
            for (int i = 0; i < kItems; ++i) y[i] *= z_values[i] / (1.f + __expf(-z_values[i]));
        }
        store_items<kDtype, kItems>(out, out_row + first, valid, y);
    }
    if (kReturnLastState && active && lane == 0) {
        for (int n = 0; n < kStates; ++n) last_state[(batch * (long long)dim + channel) * kStates + n] = carry[n];
    }
}

// Backward: the same layout, chunks last to first. Per state n the chunk's states are rebuilt from the start state
// the forward saved (pass 1, lane scan, pass 2, keeping h_i and a_i in registers); the adjoint
// lam_t = C_t g_t + a_{t+1} lam_{t+1} (g = dout * silu(z)) runs as a reverse pass per lane from zero, a suffix
// shuffle scan over the lanes of (product of a, value), and a second reverse pass from the adjoint entering the lane.
// The carry between chunks is a lam at the first step of the later chunk (d last_state at the end); after chunk 0
// it is the initial state's gradient. dB and dC are summed over the CTA's channels in shared memory and added to
// global memory once per CTA (fp32 atomics); dA, dD and d delta_bias are warp-reduced and added once per warp.
template <int kDtype, int kStates, int kItems, int kChannels, bool kHasZ, bool kHasD, bool kHasDeltaBias,
          bool kSoftplus, bool kHasInitialState, bool kHasLastStateGrad>
__global__ void __launch_bounds__(kChannels * 32) selective_scan_bwd(
    const void* __restrict__ u, const void* __restrict__ delta, const float* __restrict__ A,
    const float* __restrict__ B, const float* __restrict__ C, const float* __restrict__ D,
    const void* __restrict__ z, const float* __restrict__ delta_bias, const float* __restrict__ chunk_states,
    const void* __restrict__ dout, const float* __restrict__ dlast, void* __restrict__ du, void* __restrict__ ddelta,
    float* __restrict__ dA, float* __restrict__ dB, float* __restrict__ dC, float* __restrict__ dD,
    void* __restrict__ dz, float* __restrict__ ddelta_bias, float* __restrict__ dinitial_state, int dim, int length,
    int channels_per_group, long long u_batch_stride, long long u_dim_stride, long long delta_batch_stride,
    long long delta_dim_stride, long long z_batch_stride, long long z_dim_stride, long long dout_batch_stride,
    long long dout_dim_stride, long long bc_batch_stride, long long bc_group_stride, long long grad_batch_stride,
    long long grad_dim_stride) {
    constexpr int kChunk = 32 * kItems;
    constexpr float kLog2e = 1.4426950408889634f;
    // Shared: B, C, dB, dC of the chunk (4 x kStates x kChunk floats), then per warp A, the carried adjoint of
    // each state (2 x kStates) and each lane's dA partial sums (32 x kStates), indexed with a run-time n.
    extern __shared__ __align__(16) float shared[];
    float* shared_B = shared;
    float* shared_C = shared + kStates * kChunk;
    float* shared_dB = shared + 2 * kStates * kChunk;
    float* shared_dC = shared + 3 * kStates * kChunk;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* A_value = shared + 4 * kStates * kChunk + warp * 34 * kStates;
    float* carry = A_value + kStates;  // written by lane 0, read by every lane
    float* dA_partial = carry + kStates;  // [n][lane]
    const int batch = blockIdx.y;
    const int channel = blockIdx.x * kChannels + warp;
    const bool active = channel < dim;
    const int group = (blockIdx.x * kChannels) / channels_per_group;
    const long long bc_offset = batch * bc_batch_stride + group * bc_group_stride;
    const long long row = batch * (long long)dim + channel;
    const long long grad_row = batch * grad_batch_stride + channel * grad_dim_stride;
    const int chunks = (length + kChunk - 1) / kChunk;

    if (lane == 0) {
        for (int n = 0; n < kStates; ++n) {
            A_value[n] = active ? A[channel * kStates + n] : 0.f;
            carry[n] = (kHasLastStateGrad && active) ? dlast[row * kStates + n] : 0.f;
        }
    }
    for (int n = 0; n < kStates; ++n) dA_partial[n * 32 + lane] = 0.f;
    __syncwarp();
    const float D_value = (kHasD && active) ? D[channel] : 0.f;
    const float bias = (kHasDeltaBias && active) ? delta_bias[channel] : 0.f;
    float dD_sum = 0.f, dbias_sum = 0.f;

    for (int c = chunks - 1; c >= 0; --c) {
        const int chunk_start = c * kChunk;
        __syncthreads();  // the previous chunk's shared buffers are read and flushed
        for (int index = threadIdx.x; index < kStates * kChunk; index += kChannels * 32) {
            const int n = index / kChunk, t = chunk_start + index % kChunk;
            const bool inside = t < length;
            shared_B[index] = inside ? B[bc_offset + n * (long long)length + t] : 0.f;
            shared_C[index] = inside ? C[bc_offset + n * (long long)length + t] : 0.f;
            shared_dB[index] = 0.f;
            shared_dC[index] = 0.f;
        }
        __syncthreads();

        float dt[kItems], raw[kItems], u_values[kItems], g[kItems], y[kItems], du_acc[kItems], ddt[kItems];
        float dt_sum = 0.f;
        const int first = chunk_start + lane * kItems;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            const int t = first + i;
            const bool inside = active && t < length;
            u_values[i] = inside ? to_float<kDtype>(u, batch * u_batch_stride + channel * u_dim_stride + t) : 0.f;
            raw[i] = inside ? to_float<kDtype>(delta, batch * delta_batch_stride + channel * delta_dim_stride + t) + bias : 0.f;
            dt[i] = inside ? (kSoftplus ? softplus(raw[i]) : raw[i]) : 0.f;
            const float dout_i = inside ? to_float<kDtype>(dout, batch * dout_batch_stride + channel * dout_dim_stride + t) : 0.f;
            float gate = 1.f;
            if (kHasZ && inside) {
                const float z_i = to_float<kDtype>(z, batch * z_batch_stride + channel * z_dim_stride + t);
                gate = z_i / (1.f + __expf(-z_i));
            }
            g[i] = dout_i * gate;
            y[i] = du_acc[i] = ddt[i] = 0.f;
            dt_sum += dt[i];
        }

#pragma unroll 1
        for (int n = 0; n < kStates; ++n) {
            const float* B_n = shared_B + n * kChunk + lane * kItems;
            const float* C_n = shared_C + n * kChunk + lane * kItems;
            const float A_n = A_value[n], carry_n = carry[n];  // read before lane 0 replaces carry[n] below
            const float A_log2 = A_n * kLog2e;
            float a[kItems], h[kItems];
            float state = 0.f;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                a[i] = exp2f(dt[i] * A_log2);
                state = a[i] * state + dt[i] * u_values[i] * B_n[i];
            }
            const float start = active ? chunk_states[(row * chunks + c) * kStates + n] : 0.f;
            float unused_decay, unused_state;
            const float entering =
                entering_state(exp2f(dt_sum * A_log2), state, start, lane, unused_decay, unused_state);
            state = entering;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                state = a[i] * state + dt[i] * u_values[i] * B_n[i];
                h[i] = state;
            }

            // The adjoint. The factor after the lane's last item is the next lane's first a (1 in lane 31, whose
            // next adjoint is the carry, which already holds its a).
            float a_after = __shfl_down_sync(0xffffffffu, a[0], 1);
            if (lane == 31) a_after = 1.f;
            float value = 0.f, product = a_after;
#pragma unroll
            for (int i = kItems - 1; i >= 0; --i) {
                const float factor = i == kItems - 1 ? a_after : a[i + 1];
                value = C_n[i] * g[i] + factor * value;
                if (i < kItems - 1) product *= a[i + 1];
            }
            float lam = entering_adjoint(product, value, carry_n, lane);
            float lam_first = 0.f, dA_sum = 0.f;
            float* dB_n = shared_dB + n * kChunk + lane * kItems;
            float* dC_n = shared_dC + n * kChunk + lane * kItems;
#pragma unroll
            for (int i = kItems - 1; i >= 0; --i) {
                const float factor = i == kItems - 1 ? a_after : a[i + 1];
                lam = C_n[i] * g[i] + factor * lam;
                const float h_before = i == 0 ? entering : h[i - 1];
                const float through_a = lam * h_before * a[i];
                ddt[i] += through_a * A_n + lam * u_values[i] * B_n[i];
                du_acc[i] += lam * dt[i] * B_n[i];
                dA_sum += through_a * dt[i];
                y[i] += C_n[i] * h[i];
                if (active) {
                    atomicAdd(dB_n + i, lam * dt[i] * u_values[i]);
                    atomicAdd(dC_n + i, g[i] * h[i]);
                }
                if (i == 0) lam_first = lam;
            }
            dA_partial[n * 32 + lane] += dA_sum;
            if (lane == 0) carry[n] = a[0] * lam_first;
        }

#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            const int t = first + i;
            if (!active || t >= length) continue;
            const long long grad_index = grad_row + t;  // du, ddelta and dz share one layout
            float value = y[i] + D_value * u_values[i];
            if (kHasZ) {
                const float z_i = to_float<kDtype>(z, batch * z_batch_stride + channel * z_dim_stride + t);
                const float sigmoid = 1.f / (1.f + __expf(-z_i));
                const float dout_i = to_float<kDtype>(dout, batch * dout_batch_stride + channel * dout_dim_stride + t);
                store<kDtype>(dz, grad_index, dout_i * value * sigmoid * (1.f + z_i * (1.f - sigmoid)));
            }
            dD_sum += g[i] * u_values[i];
            store<kDtype>(du, grad_index, du_acc[i] + g[i] * D_value);
            const float draw = kSoftplus ? ddt[i] / (1.f + __expf(-raw[i])) : ddt[i];
            dbias_sum += draw;
            store<kDtype>(ddelta, grad_index, draw);
        }
        __syncthreads();
        for (int index = threadIdx.x; index < kStates * kChunk; index += kChannels * 32) {
            const int n = index / kChunk, t = chunk_start + index % kChunk;
            if (t < length) {
                atomicAdd(dB + bc_offset + n * (long long)length + t, shared_dB[index]);
                atomicAdd(dC + bc_offset + n * (long long)length + t, shared_dC[index]);
            }
        }
    }

#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        dD_sum += __shfl_down_sync(0xffffffffu, dD_sum, offset);
        dbias_sum += __shfl_down_sync(0xffffffffu, dbias_sum, offset);
    }
    for (int n = 0; n < kStates; ++n) {
        float sum = dA_partial[n * 32 + lane];
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
        if (active && lane == 0) atomicAdd(dA + channel * kStates + n, sum);
    }
    if (active && lane == 0) {
        if (kHasD) atomicAdd(dD + channel, dD_sum);
        if (kHasDeltaBias) atomicAdd(ddelta_bias + channel, dbias_sum);
        if (kHasInitialState) {
            for (int n = 0; n < kStates; ++n) dinitial_state[row * kStates + n] = carry[n];
        }
    }
}

// Backward v2 (#14). The same math as v1, mapped so that the state loop has no shared-memory atomics. v1 sums dB and
// dC over a CTA's channels with two shared-memory atomicAdds per item and state; on sm_80/sm_90 a float atomicAdd
// to shared memory is a compare-and-swap retry loop (ATOMS.CAST.SPIN in the SASS), and the CTA's four warps
// contend for the same addresses. v2 instead puts kLaneChannels channels in each warp: lane = lane_channel *
// kSegments + segment, so each channel's chunk is kSegments lanes x kItems steps (the lane scans have log2
// kSegments levels, not 5). A warp's kLaneChannels channels hold the same steps, so their dB and dC are summed with
// a shuffle reduce-scatter (sum_over_lane_channels: log2 kLaneChannels halvings; each lane ends with kItems /
// kLaneChannels summed steps), stored without atomics into the warp's slice of a per-chunk shared buffer, summed
// over the CTA's kWarps warps after one barrier per chunk, and added to global memory with one atomic per
// (state, step) per CTA of kWarps x kLaneChannels channels (v1: per 4 channels). With one warp per CTA there is
// nothing to sum across warps: the lanes add their sums to global memory directly, with no slices, no flush and no
// barrier for them (and a chunk of one channel per warp still fits in shared memory at 64 states).
// Registers: what stays live through the state loop is dt, dt u, the gated dout g and three sums per item (y,
// sum_n lam B, sum_n A lam a h_prev); u, delta, z and dout are loaded again after the loop (v1 kept u and the raw
// delta too). The states' start values, A and the carried adjoints are read from shared memory in [n][channel]
// rows padded by one (a warp's channels read distinct banks, and the start states, loaded state-fastest so that
// the global reads coalesce, are written to distinct banks too); B and C are staged with each quarter of a
// segment's items side by side, so each lane reads its items with float4 loads that hit distinct banks.
// One exp per lane and state besides the items' a_i: the decay over items 1.. of a lane, exp2(A sum dt), gives
// both the lane's decay for the state scan (times a_0) and the factor of its adjoint scan (times the next lane's
// a_0), where v1 took a second exp and a chain of products.
// Needs the forward's states saved every kSegments x kItems steps (its kSaveEvery).
// kDeterministic: no atomics at all. Each CTA stores its dB and dC sums into its own row of partial sums (batch,
// groups, CTAs of a group, N, L), each batch element its dA, dD and d delta_bias into (batch, dim[, N]); the launcher
// adds them up in a fixed order, so the gradients are the same bit for bit from run to run.
// Sums each item over the warp's channels (the lane bits above the segment bits), halving at each level: a lane
// keeps the half of its items that its bit selects and sends the other half to its partner. Afterwards values[r],
// r < kItems / kLaneChannels, of lane (lane_channel, segment) is the sum of item lane_channel * kItems /
// kLaneChannels + r of that segment; the rest is left over.
template <int kItems, int kSegments>
__device__ __forceinline__ void sum_over_lane_channels(float (&values)[kItems], int lane) {
#pragma unroll
    for (int offset = 16; offset >= kSegments; offset /= 2) {
        const int half = kItems * offset / 32;
        const bool upper = lane & offset;
#pragma unroll
        for (int k = 0; k < half; ++k) {
            const float send = upper ? values[k] : values[k + half];
            const float keep = upper ? values[k + half] : values[k];
            values[k] = keep + __shfl_xor_sync(0xffffffffu, send, offset);
        }
    }
}

// A lane's kKept sums of one state, for the chunk's steps from `step`: into its warp's slice of the chunk's sums,
// or (one warp per CTA) added to global memory, whose row for the state and chunk is `global_row`. Past the end the
// sums are 0 (g and dt u are 0 there) and go to the last step instead: adding 0 changes nothing, and unlike a branch
// per atomic (which made ptxas spill at 2 channels a warp) it keeps the loop straight.
// Deterministic: the CTA's own row of the partial sums, written (past the end: not at all) instead of added.
template <int kKept, bool kSlices, bool kDeterministic>
__device__ __forceinline__ void put_sums(const float* sums, float* slice, float* global_row, int step,
                                         int steps_left) {
#pragma unroll
    for (int r = 0; r < kKept; ++r) {
        if (kSlices) {
            slice[step + r] = sums[r];
        } else if (kDeterministic) {
            if (step + r < steps_left) global_row[step + r] = sums[r];
        } else {
            atomicAdd(global_row + min(step + r, steps_left - 1), sums[r]);
        }
    }
}

// Occupancy target: on sm_90, 16 warps an SM, i.e. at most 128 registers a thread (v1 takes 145), which the layouts
// fit without spilling (ptxas of NVRTC 13.0; but for 8 bytes with fp32 inputs at 2 channels a warp). sm_80's ptxas
// spills up to 128 bytes there, so on sm_80 the target is 12 warps (at most 168 registers).

template <int kDtype, int kStates, int kItems, int kLaneChannels, int kWarps, bool kHasZ, bool kHasD,
          bool kHasDeltaBias, bool kSoftplus, bool kHasInitialState, bool kHasLastStateGrad, bool kDeterministic>
__global__ void __launch_bounds__(kWarps * 32, (__CUDA_ARCH__ >= 900 ? 16 : 12) / kWarps) selective_scan_bwd_v2(
    const void* __restrict__ u, const void* __restrict__ delta, const float* __restrict__ A,
    const float* __restrict__ B, const float* __restrict__ C, const float* __restrict__ D,
    const void* __restrict__ z, const float* __restrict__ delta_bias, const float* __restrict__ chunk_states,
    const void* __restrict__ dout, const float* __restrict__ dlast, void* __restrict__ du, void* __restrict__ ddelta,
    float* __restrict__ dA, float* __restrict__ dB, float* __restrict__ dC, float* __restrict__ dD,
    void* __restrict__ dz, float* __restrict__ ddelta_bias, float* __restrict__ dinitial_state, int dim, int length,
    int channels_per_group, long long u_batch_stride, long long u_dim_stride, long long delta_batch_stride,
    long long delta_dim_stride, long long z_batch_stride, long long z_dim_stride, long long dout_batch_stride,
    long long dout_dim_stride, long long bc_batch_stride, long long bc_group_stride, long long grad_batch_stride,
    long long grad_dim_stride) {
    constexpr int kSegments = 32 / kLaneChannels;
    constexpr int kChunk = kSegments * kItems;
    constexpr int kChannels = kWarps * kLaneChannels;
    constexpr int kKept = kItems / kLaneChannels;
    constexpr int kPitch = kChannels + 1;  // of the [n][channel] rows
    constexpr bool kSlices = kWarps > 1;
    constexpr float kLog2e = 1.4426950408889634f;
    static_assert(32 % kLaneChannels == 0 && kItems % 4 == 0 && kItems % kLaneChannels == 0, "lane layout");
    static_assert(kWarps == 1 || kWarps == 2 || kWarps == 4, "whole CTAs fill the occupancy target");
    // Shared: B and C of the chunk (staged_position order); each warp's dB and dC sums of the chunk [warp][n][step]
    // (with more than one warp); A, the chunk's start states and the carried adjoints [n][channel of the CTA, kPitch];
    // each lane's dA sums [warp][n][lane].
    extern __shared__ __align__(16) float workspace[];
    float* shared_B = workspace;
    float* shared_C = shared_B + kStates * kChunk;
    float* partial_dB = shared_C + kStates * kChunk;
    float* partial_dC = partial_dB + (kSlices ? kWarps * kStates * kChunk : 0);
    float* A_values = partial_dC + (kSlices ? kWarps * kStates * kChunk : 0);
    float* start_states = A_values + kStates * kPitch;
    float* carry = start_states + kStates * kPitch;
    float* dA_partial = carry + kStates * kPitch;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int segment = lane % kSegments, lane_channel = lane / kSegments;
    const int cta_channel = warp * kLaneChannels + lane_channel;
    const int first_channel = blockIdx.x * kChannels;
    const int channel = first_channel + cta_channel;
    const bool active = channel < dim;
    const int batch = blockIdx.y;
    // Every channel of a CTA is in one group: the launcher makes kChannels divide channels_per_group.
    const int group = first_channel / channels_per_group;
    const long long bc_offset = batch * bc_batch_stride + group * bc_group_stride;
    // dB and dC: (batch, groups, N, L) sums over every CTA; deterministic, each CTA's own (batch, groups, CTAs of a
    // group, N, L) row of partial sums, which the launcher adds up in a fixed order.
    const int ctas_per_group = channels_per_group / kChannels;
    const long long dbc_offset =
        kDeterministic
            ? ((batch * (long long)(dim / channels_per_group) + group) * ctas_per_group +
               (first_channel % channels_per_group) / kChannels) * kStates * (long long)length
            : bc_offset;
    const long long row = batch * (long long)dim + channel;
    const long long grad_row = batch * grad_batch_stride + channel * grad_dim_stride;
    const long long u_row = batch * u_batch_stride + channel * u_dim_stride;
    const long long delta_row = batch * delta_batch_stride + channel * delta_dim_stride;
    const long long z_row = batch * z_batch_stride + channel * z_dim_stride;
    const long long dout_row = batch * dout_batch_stride + channel * dout_dim_stride;
    const int chunks = (length + kChunk - 1) / kChunk;

    for (int index = threadIdx.x; index < kStates * kChannels; index += kWarps * 32) {
        const int n = index % kStates, c = first_channel + index / kStates;
        const bool inside = c < dim;
        A_values[n * kPitch + c - first_channel] = inside ? A[c * kStates + n] : 0.f;
        carry[n * kPitch + c - first_channel] =
            (kHasLastStateGrad && inside) ? dlast[(batch * (long long)dim + c) * kStates + n] : 0.f;
    }
    for (int n = 0; n < kStates; ++n) dA_partial[(warp * kStates + n) * 32 + lane] = 0.f;
    const float D_value = (kHasD && active) ? D[channel] : 0.f;
    const float bias = (kHasDeltaBias && active) ? delta_bias[channel] : 0.f;
    float dD_sum = 0.f, dbias_sum = 0.f;

    for (int chunk = chunks - 1; chunk >= 0; --chunk) {
        const int chunk_start = chunk * kChunk;
        __syncthreads();  // the previous chunk is done with shared memory (the first time: the setup above is written)
        stage_chunk<kStates, kItems, kSegments, kWarps * 32>(B + bc_offset, C + bc_offset, length, chunk_start,
                                                              shared_B, shared_C);
        for (int index = threadIdx.x; index < kStates * kChannels; index += kWarps * 32) {
            const int n = index % kStates, c = first_channel + index / kStates;
            const long long saved = ((batch * (long long)dim + c) * chunks + chunk) * kStates + n;
            start_states[n * kPitch + c - first_channel] = c < dim ? chunk_states[saved] : 0.f;
        }
        __syncthreads();

        // Steps past the end get delta 0, u 0 and g 0: decay 1, no input, no output gradient.
        float dt[kItems], dtu[kItems], g[kItems], y[kItems], lam_B[kItems], decay_grad[kItems];
        float dt_after_first = 0.f;
        const int first = chunk_start + segment * kItems;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            const int t = first + i;
            const bool inside = active && t < length;
            const float u_i = inside ? to_float<kDtype>(u, u_row + t) : 0.f;
            const float raw = inside ? to_float<kDtype>(delta, delta_row + t) + bias : 0.f;
            dt[i] = inside ? (kSoftplus ? softplus(raw) : raw) : 0.f;
            dtu[i] = dt[i] * u_i;
            const float dout_i = inside ? to_float<kDtype>(dout, dout_row + t) : 0.f;
            float gate = 1.f;
            if (kHasZ && inside) {
                const float z_i = to_float<kDtype>(z, z_row + t);
                gate = z_i / (1.f + __expf(-z_i));
            }
            g[i] = dout_i * gate;
            y[i] = lam_B[i] = decay_grad[i] = 0.f;
            if (i > 0) dt_after_first += dt[i];
        }

#pragma unroll 1
        for (int n = 0; n < kStates; ++n) {
            const int slot = n * kPitch + cta_channel;
            const float A_n = A_values[slot], start = start_states[slot], carry_n = carry[slot];
            const float A_log2 = A_n * kLog2e;
            float B_n[kItems], C_n[kItems];
            load_staged<kItems, kSegments>(shared_B + n * kChunk, segment, B_n);
            load_staged<kItems, kSegments>(shared_C + n * kChunk, segment, C_n);
            const float decay_after_first = exp2f(dt_after_first * A_log2);

            // The chunk's states: pass 1 from a zero state per lane, the group's scan, pass 2 from the entering state.
            float a[kItems], b[kItems];
            float h = 0.f;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                a[i] = exp2f(dt[i] * A_log2);
                b[i] = dtu[i] * B_n[i];
                h = fmaf(a[i], h, b[i]);
            }
            float unused_decay, unused_state;
            h = entering_state<kSegments>(a[0] * decay_after_first, h, start, segment, unused_decay, unused_state);
            float decayed[kItems], dC_sum[kItems];  // decayed: a_i h_{i-1}, the factor of dA and of A's ddelta term
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                decayed[i] = a[i] * h;
                h = fmaf(a[i], h, b[i]);
                y[i] = fmaf(C_n[i], h, y[i]);
                dC_sum[i] = g[i] * h;
            }
            // The sums are over the warp's channels, so a lane of an inactive channel still puts its share.
            const int kept_step = segment * kItems + lane_channel * kKept;
            const long long global_row = dbc_offset + n * (long long)length + chunk_start;
            sum_over_lane_channels<kItems, kSegments>(dC_sum, lane);
            put_sums<kKept, kSlices, kDeterministic>(dC_sum, partial_dC + (warp * kStates + n) * kChunk,
                                                     dC + global_row, kept_step, length - chunk_start);

            // The adjoint. The factor after the lane's last item is the next lane's first a (1 in the group's last
            // lane, whose next adjoint is the carry, which already holds its a).
            float a_after = __shfl_down_sync(0xffffffffu, a[0], 1, kSegments);
            if (segment == kSegments - 1) a_after = 1.f;
            float value = 0.f;
#pragma unroll
            for (int i = kItems - 1; i >= 0; --i) {
                value = fmaf(i == kItems - 1 ? a_after : a[i + 1], value, C_n[i] * g[i]);
            }
            float lam = entering_adjoint<kSegments>(a_after * decay_after_first, value, carry_n, segment);
            float dB_sum[kItems];
            float dA_sum = 0.f;
#pragma unroll
            for (int i = kItems - 1; i >= 0; --i) {
                lam = fmaf(i == kItems - 1 ? a_after : a[i + 1], lam, C_n[i] * g[i]);
                const float through_a = lam * decayed[i];
                decay_grad[i] = fmaf(A_n, through_a, decay_grad[i]);
                dA_sum = fmaf(through_a, dt[i], dA_sum);
                lam_B[i] = fmaf(lam, B_n[i], lam_B[i]);
                dB_sum[i] = lam * dtu[i];
            }
            sum_over_lane_channels<kItems, kSegments>(dB_sum, lane);
            put_sums<kKept, kSlices, kDeterministic>(dB_sum, partial_dB + (warp * kStates + n) * kChunk,
                                                     dB + global_row, kept_step, length - chunk_start);
            dA_partial[(warp * kStates + n) * 32 + lane] += dA_sum;
            __syncwarp();  // every lane of the group has read carry_n
            if (segment == 0) carry[slot] = a[0] * lam;  // lam is now the adjoint at the chunk's first step
        }

#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            const int t = first + i;
            if (!active || t >= length) continue;
            const long long grad_index = grad_row + t;  // du, ddelta and dz share one layout
            const float u_i = to_float<kDtype>(u, u_row + t);
            if (kHasZ) {
                const float z_i = to_float<kDtype>(z, z_row + t);
                const float sigmoid = 1.f / (1.f + __expf(-z_i));
                const float dout_i = to_float<kDtype>(dout, dout_row + t);
                const float value = fmaf(D_value, u_i, y[i]);
                store<kDtype>(dz, grad_index, dout_i * value * sigmoid * (1.f + z_i * (1.f - sigmoid)));
            }
            dD_sum = fmaf(g[i], u_i, dD_sum);
            store<kDtype>(du, grad_index, fmaf(dt[i], lam_B[i], g[i] * D_value));
            const float ddt = fmaf(u_i, lam_B[i], decay_grad[i]);
            float draw = ddt;
            if (kSoftplus) {
                const float raw = to_float<kDtype>(delta, delta_row + t) + bias;
                draw = ddt / (1.f + __expf(-raw));
            }
            dbias_sum += draw;
            store<kDtype>(ddelta, grad_index, draw);
        }
        if (!kSlices) continue;
        __syncthreads();  // every warp's sums of the chunk are in shared memory
        for (int index = threadIdx.x; index < kStates * kChunk; index += kWarps * 32) {
            const int n = index / kChunk, step = index % kChunk, t = chunk_start + step;
            if (t >= length) continue;
            float dB_total = 0.f, dC_total = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) {
                dB_total += partial_dB[w * kStates * kChunk + index];
                dC_total += partial_dC[w * kStates * kChunk + index];
            }
            const long long position = dbc_offset + n * (long long)length + t;
            if (kDeterministic) {
                dB[position] = dB_total;
                dC[position] = dC_total;
            } else {
                atomicAdd(dB + position, dB_total);
                atomicAdd(dC + position, dC_total);
            }
        }
    }

    // dD, d delta_bias and dA: the lanes of each channel summed by shuffles, one atomic per channel (batch elements
    // add to the same values).
#pragma unroll
    for (int offset = kSegments / 2; offset > 0; offset /= 2) {
        dD_sum += __shfl_xor_sync(0xffffffffu, dD_sum, offset);
        dbias_sum += __shfl_xor_sync(0xffffffffu, dbias_sum, offset);
    }
    for (int n = 0; n < kStates; ++n) {
        float sum = dA_partial[(warp * kStates + n) * 32 + lane];
#pragma unroll
        for (int offset = kSegments / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        // Deterministic: dA, dD and d delta_bias per batch element, (batch, dim, N) and (batch, dim).
        if (active && segment == 0) {
            if (kDeterministic) {
                dA[row * kStates + n] = sum;
            } else {
                atomicAdd(dA + channel * kStates + n, sum);
            }
        }
    }
    if (active && segment == 0) {
        const long long at = kDeterministic ? row : channel;
        if (kHasD) {
            if (kDeterministic) dD[at] = dD_sum; else atomicAdd(dD + at, dD_sum);
        }
        if (kHasDeltaBias) {
            if (kDeterministic) ddelta_bias[at] = dbias_sum; else atomicAdd(ddelta_bias + at, dbias_sum);
        }
    }
    if (kHasInitialState) {  // after chunk 0 the carried adjoint is a_0 lam_0 = dL/dh_0
        __syncthreads();
        for (int index = threadIdx.x; index < kStates * kChannels; index += kWarps * 32) {
            const int n = index % kStates, c = first_channel + index / kStates;
            const float gradient = carry[n * kPitch + c - first_channel];
            if (c < dim) dinitial_state[(batch * (long long)dim + c) * kStates + n] = gradient;
        }
    }
}
