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
// lane); kChannels (warps per CTA); and flags for z, D, delta_bias, softplus, an initial state, the last state and
// the chunk start states that the backward needs.
// B and C come as fp32 (batch, groups, N, L) with unit stride in L.

typedef unsigned short u16;

template <int kDtype> __device__ __forceinline__ float to_float(const void* base, long long index) {
    if (kDtype == 0) return static_cast<const float*>(base)[index];
    const u16 bits = static_cast<const u16*>(base)[index];
    if (kDtype == 1) return __uint_as_float(static_cast<unsigned int>(bits) << 16);
    float value;
    asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
    return value;
}

template <int kDtype> __device__ __forceinline__ void store(void* base, long long index, float value) {
    if (kDtype == 0) {
        static_cast<float*>(base)[index] = value;
        return;
    }
    u16 bits;
    if (kDtype == 1) {
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    } else {
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
    }
    static_cast<u16*>(base)[index] = bits;
}

__device__ __forceinline__ float softplus(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }

// The state entering this lane's items, from each lane's (decay over its items, state from a zero start) and the
// state `carry` before the chunk: an inclusive shuffle scan of the pairs under
// (d1, h1) o (d2, h2) = (d1 d2, d2 h1 + h2), shifted by one lane. The whole chunk's pair goes to chunk_decay,
// chunk_state (lane 31's inclusive value).
__device__ __forceinline__ float entering_state(float decay, float h, float carry, int lane, float& chunk_decay,
                                                float& chunk_state) {
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
        const float decay_before = __shfl_up_sync(0xffffffffu, decay, offset);
        const float h_before = __shfl_up_sync(0xffffffffu, h, offset);
        if (lane >= offset) {
            h = decay * h_before + h;
            decay = decay * decay_before;
        }
    }
    float decay_in = __shfl_up_sync(0xffffffffu, decay, 1);
    float h_in = __shfl_up_sync(0xffffffffu, h, 1);
    if (lane == 0) {
        decay_in = 1.f;
        h_in = 0.f;
    }
    chunk_decay = __shfl_sync(0xffffffffu, decay, 31);
    chunk_state = __shfl_sync(0xffffffffu, h, 31);
    return decay_in * carry + h_in;
}

template <int kDtype, int kStates, int kItems, int kChannels, bool kHasZ, bool kHasD, bool kHasDeltaBias,
          bool kSoftplus, bool kHasInitialState, bool kReturnLastState, bool kSaveChunkStates>
__global__ void __launch_bounds__(kChannels * 32) selective_scan_fwd(
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
    // Shared: B then C of the chunk (2 x kStates x kChunk floats), then per warp A log2(e) and the carried
    // state of each state n (2 x kStates floats): the state loop indexes them with a run-time n, which registers
    // cannot take without a local-memory stack frame.
    extern __shared__ float shared[];
    float* shared_B = shared;
    float* shared_C = shared + kStates * kChunk;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* A_log2 = shared + 2 * kStates * kChunk + warp * 2 * kStates;
    float* carry = A_log2 + kStates;  // written by lane 0, read by every lane
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

    const int chunks = (length + kChunk - 1) / kChunk;
    for (int chunk_start = 0; chunk_start < length; chunk_start += kChunk) {
        if (kSaveChunkStates && active && lane == 0) {  // the backward rebuilds each chunk from its start state
            float* saved = chunk_states + ((batch * (long long)dim + channel) * chunks + chunk_start / kChunk) * kStates;
            for (int n = 0; n < kStates; ++n) saved[n] = carry[n];
        }
        __syncthreads();  // the previous chunk's B/C reads are done
        for (int index = threadIdx.x; index < kStates * kChunk; index += kChannels * 32) {
            const int n = index / kChunk, t = chunk_start + index % kChunk;
            const bool inside = t < length;
            shared_B[index] = inside ? B_rows[n * (long long)length + t] : 0.f;
            shared_C[index] = inside ? C_rows[n * (long long)length + t] : 0.f;
        }
        __syncthreads();

        // Steps past the end get delta 0 and u 0: decay 1 and no input, so the carried state passes unchanged.
        float dt[kItems], dtu[kItems], u_values[kItems], y[kItems];
        float dt_sum = 0.f;
        const int first = chunk_start + lane * kItems;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            const int t = first + i;
            const bool inside = active && t < length;
            const float u_i = inside ? to_float<kDtype>(u, batch * u_batch_stride + channel * u_dim_stride + t) : 0.f;
            float dt_i = inside ? to_float<kDtype>(delta, batch * delta_batch_stride + channel * delta_dim_stride + t) + bias : 0.f;
            if (kSoftplus && inside) dt_i = softplus(dt_i);
            dt[i] = dt_i;
            dtu[i] = dt_i * u_i;
            u_values[i] = u_i;
            y[i] = 0.f;
            dt_sum += dt_i;
        }

#pragma unroll 1
        for (int n = 0; n < kStates; ++n) {
            const float* B_n = shared_B + n * kChunk + lane * kItems;
            const float* C_n = shared_C + n * kChunk + lane * kItems;
            const float A_n = A_log2[n], carry_n = carry[n];  // read before lane 0 replaces carry[n] below
            float a[kItems];
            float h = 0.f;  // pass 1: this lane's items from a zero state
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                a[i] = exp2f(dt[i] * A_n);
                h = a[i] * h + dtu[i] * B_n[i];
            }
            float chunk_decay, chunk_h;
            float state = entering_state(exp2f(dt_sum * A_n), h, carry_n, lane, chunk_decay, chunk_h);
            if (lane == 0) carry[n] = chunk_decay * carry_n + chunk_h;
#pragma unroll
            for (int i = 0; i < kItems; ++i) {  // pass 2: from the entering state, with the outputs
                state = a[i] * state + dtu[i] * B_n[i];
                y[i] += C_n[i] * state;
            }
        }

#pragma unroll
        for (int i = 0; i < kItems; ++i) {
            const int t = first + i;
            if (!active || t >= length) continue;
            float value = y[i];
            if (kHasD) value += D_value * u_values[i];
            if (kHasZ) {
                const float z_i = to_float<kDtype>(z, batch * z_batch_stride + channel * z_dim_stride + t);
                value *= z_i / (1.f + __expf(-z_i));
            }
            store<kDtype>(out, batch * out_batch_stride + channel * out_dim_stride + t, value);
        }
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
    long long dout_dim_stride, long long bc_batch_stride, long long bc_group_stride) {
    constexpr int kChunk = 32 * kItems;
    constexpr float kLog2e = 1.4426950408889634f;
    // Shared: B, C, dB, dC of the chunk (4 x kStates x kChunk floats), then per warp A, the carried adjoint of
    // each state (2 x kStates) and each lane's dA partial sums (32 x kStates), indexed with a run-time n.
    extern __shared__ float shared[];
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
#pragma unroll
            for (int offset = 1; offset < 32; offset *= 2) {
                const float value_after = __shfl_down_sync(0xffffffffu, value, offset);
                const float product_after = __shfl_down_sync(0xffffffffu, product, offset);
                if (lane + offset < 32) {
                    value = value + product * value_after;
                    product = product * product_after;
                }
            }
            float product_next = __shfl_down_sync(0xffffffffu, product, 1);
            float value_next = __shfl_down_sync(0xffffffffu, value, 1);
            if (lane == 31) {
                product_next = 1.f;
                value_next = 0.f;
            }
            float lam = product_next * carry_n + value_next;
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
            const long long grad_index = row * length + t;  // du, ddelta and dz are contiguous (batch, dim, L)
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
