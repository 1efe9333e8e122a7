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
// lane); kChannels (warps per CTA); and flags for z, D, delta_bias, softplus, an initial state and the last state.
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

template <int kDtype, int kStates, int kItems, int kChannels, bool kHasZ, bool kHasD, bool kHasDeltaBias,
          bool kSoftplus, bool kHasInitialState, bool kReturnLastState>
__global__ void __launch_bounds__(kChannels * 32) selective_scan_fwd(
    const void* __restrict__ u, const void* __restrict__ delta, const float* __restrict__ A,
    const float* __restrict__ B, const float* __restrict__ C, const float* __restrict__ D,
    const void* __restrict__ z, const float* __restrict__ delta_bias, const float* __restrict__ initial_state,
    void* __restrict__ out, float* __restrict__ last_state, int dim, int length, int channels_per_group,
    long long u_batch_stride, long long u_dim_stride, long long delta_batch_stride, long long delta_dim_stride,
    long long z_batch_stride, long long z_dim_stride, long long out_batch_stride, long long out_dim_stride,
    long long bc_batch_stride, long long bc_group_stride) {
    constexpr int kChunk = 32 * kItems;
    constexpr float kLog2e = 1.4426950408889634f;
    extern __shared__ float shared[];  // B then C of the chunk: 2 x kStates x kChunk floats
    float* shared_B = shared;
    float* shared_C = shared + kStates * kChunk;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int batch = blockIdx.y;
    const int channel = blockIdx.x * kChannels + warp;
    const bool active = channel < dim;
    // Every channel of a CTA is in one group: the launcher makes kChannels divide channels_per_group.
    const int group = (blockIdx.x * kChannels) / channels_per_group;
    const float* B_rows = B + batch * bc_batch_stride + group * bc_group_stride;
    const float* C_rows = C + batch * bc_batch_stride + group * bc_group_stride;

    float A_log2[kStates], carry[kStates];
#pragma unroll
    for (int n = 0; n < kStates; ++n) {
        A_log2[n] = active ? A[channel * kStates + n] * kLog2e : 0.f;
        carry[n] = (kHasInitialState && active) ? initial_state[(batch * (long long)dim + channel) * kStates + n] : 0.f;
    }
    const float D_value = (kHasD && active) ? D[channel] : 0.f;
    const float bias = (kHasDeltaBias && active) ? delta_bias[channel] : 0.f;

    for (int chunk_start = 0; chunk_start < length; chunk_start += kChunk) {
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
            float a[kItems];
            float h = 0.f;  // pass 1: this lane's items from a zero state
#pragma unroll
            for (int i = 0; i < kItems; ++i) {
                a[i] = exp2f(dt[i] * A_log2[n]);
                h = a[i] * h + dtu[i] * B_n[i];
            }
            float decay = exp2f(dt_sum * A_log2[n]);
            // Inclusive scan over lanes of (decay, h) under (d1, h1) o (d2, h2) = (d1 d2, d2 h1 + h2).
#pragma unroll
            for (int offset = 1; offset < 32; offset *= 2) {
                const float decay_before = __shfl_up_sync(0xffffffffu, decay, offset);
                const float h_before = __shfl_up_sync(0xffffffffu, h, offset);
                if (lane >= offset) {
                    h = decay * h_before + h;
                    decay = decay * decay_before;
                }
            }
            // The state entering this lane: the lanes before it applied to the chunk's carried state.
            float decay_in = __shfl_up_sync(0xffffffffu, decay, 1);
            float h_in = __shfl_up_sync(0xffffffffu, h, 1);
            if (lane == 0) {
                decay_in = 1.f;
                h_in = 0.f;
            }
            float state = decay_in * carry[n] + h_in;
            const float chunk_decay = __shfl_sync(0xffffffffu, decay, 31);
            const float chunk_h = __shfl_sync(0xffffffffu, h, 31);
            carry[n] = chunk_decay * carry[n] + chunk_h;
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
#pragma unroll
        for (int n = 0; n < kStates; ++n) last_state[(batch * (long long)dim + channel) * kStates + n] = carry[n];
    }
}
