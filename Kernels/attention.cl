// Multi-head attention, non-causal: O = softmax(Q K^T / sqrt(DH)) V per (batch, head).
// Flash-style: nothing of size N x N is stored. The forward keeps a running max and sum per
// query (online softmax over key blocks of BK) and saves lse = log-sum-exp of the scaled
// scores; the backward recomputes P_ij = exp(s_ij - lse_i) from it.
//
// Layout: q, k, v, o, dq, dk, dv, do are rows of token matrices [B * N, ld] (the qkv GEMM's
// output [B*N, 3D] read in place: q at column 0, k at D, v at 2D, ld = 3D); head h occupies
// columns [h * DH, (h + 1) * DH) after the tensor's offset. lse, delta [B, H, N].
// DH (head dimension) is a compile-time define so per-row arrays live in registers.
//
// One work-item per (query i or key j, head h, batch b): global (N, H, B).

#ifndef DH
#define DH 64
#endif
#ifndef BK
#define BK 16
#endif

#define ROW(base, offset, ld, b, N, t, h) ((base) + (offset) + ((b) * (N) + (t)) * (ld) + (h) * DH)

__kernel void attention_forward(__global const float *q, const int q_offset,
                                __global const float *k, const int k_offset,
                                __global const float *v, const int v_offset, const int ld_qkv,
                                __global float *o, const int o_offset, const int ld_o,
                                __global float *lse, const int lse_offset,
                                const int N, const int H, const float scale)
{
    const int i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    if (i >= N) return;
    float qi[DH], acc[DH];
    const __global float *q_row = ROW(q, q_offset, ld_qkv, b, N, i, h);
    for (int c = 0; c < DH; ++c) { qi[c] = q_row[c] * scale; acc[c] = 0.0f; }
    float running_max = -INFINITY, running_sum = 0.0f;

    for (int j0 = 0; j0 < N; j0 += BK) {
        const int count = min(BK, N - j0);
        float s[BK];
        float block_max = -INFINITY;
        for (int jj = 0; jj < count; ++jj) {
            const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, j0 + jj, h);
            float dot = 0.0f;
            for (int c = 0; c < DH; ++c) dot += qi[c] * k_row[c];
            s[jj] = dot;
            block_max = fmax(block_max, dot);
        }
        const float new_max = fmax(running_max, block_max);
        const float correction = exp(running_max - new_max);  // 0 on the first block
        running_sum *= correction;
        for (int c = 0; c < DH; ++c) acc[c] *= correction;
        for (int jj = 0; jj < count; ++jj) {
            const float p = exp(s[jj] - new_max);
            running_sum += p;
            const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, j0 + jj, h);
            for (int c = 0; c < DH; ++c) acc[c] += p * v_row[c];
        }
        running_max = new_max;
    }
    const float inverse = 1.0f / running_sum;
    __global float *o_row = ROW(o, o_offset, ld_o, b, N, i, h);
    for (int c = 0; c < DH; ++c) o_row[c] = acc[c] * inverse;
    lse[lse_offset + (b * H + h) * N + i] = running_max + log(running_sum);
}

// delta_i = sum_c dO_ic O_ic (the row term of the softmax backward).
__kernel void attention_backward_delta(__global const float *d_o, const int d_o_offset,
                                       __global const float *o, const int o_offset, const int ld_o,
                                       __global float *delta, const int delta_offset,
                                       const int N, const int H)
{
    const int i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    if (i >= N) return;
    const __global float *do_row = ROW(d_o, d_o_offset, ld_o, b, N, i, h);
    const __global float *o_row = ROW(o, o_offset, ld_o, b, N, i, h);
    float sum = 0.0f;
    for (int c = 0; c < DH; ++c) sum += do_row[c] * o_row[c];
    delta[delta_offset + (b * H + h) * N + i] = sum;
}

// dQ_i = scale * sum_j P_ij (dO_i . V_j - delta_i) K_j. One work-item per query.
__kernel void attention_backward_dq(__global const float *q, const int q_offset,
                                    __global const float *k, const int k_offset,
                                    __global const float *v, const int v_offset, const int ld_qkv,
                                    __global const float *d_o, const int d_o_offset, const int ld_o,
                                    __global const float *lse, const int lse_offset,
                                    __global const float *delta, const int delta_offset,
                                    __global float *dq, const int dq_offset, const int ld_d,
                                    const int N, const int H, const float scale)
{
    const int i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    if (i >= N) return;
    float qi[DH], doi[DH], acc[DH];
    const __global float *q_row = ROW(q, q_offset, ld_qkv, b, N, i, h);
    const __global float *do_row = ROW(d_o, d_o_offset, ld_o, b, N, i, h);
    for (int c = 0; c < DH; ++c) { qi[c] = q_row[c] * scale; doi[c] = do_row[c]; acc[c] = 0.0f; }
    const float lse_i = lse[lse_offset + (b * H + h) * N + i];
    const float delta_i = delta[delta_offset + (b * H + h) * N + i];
    for (int j = 0; j < N; ++j) {
        const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, j, h);
        const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, j, h);
        float s = 0.0f, dp = 0.0f;
        for (int c = 0; c < DH; ++c) { s += qi[c] * k_row[c]; dp += doi[c] * v_row[c]; }
        const float ds = exp(s - lse_i) * (dp - delta_i);
        for (int c = 0; c < DH; ++c) acc[c] += ds * k_row[c];
    }
    __global float *dq_row = ROW(dq, dq_offset, ld_d, b, N, i, h);
    for (int c = 0; c < DH; ++c) dq_row[c] = acc[c] * scale;
}

// dV_j = sum_i P_ij dO_i;  dK_j = scale * sum_i P_ij (dO_i . V_j - delta_i) Q_i.
// One work-item per key.
__kernel void attention_backward_dkv(__global const float *q, const int q_offset,
                                     __global const float *k, const int k_offset,
                                     __global const float *v, const int v_offset, const int ld_qkv,
                                     __global const float *d_o, const int d_o_offset, const int ld_o,
                                     __global const float *lse, const int lse_offset,
                                     __global const float *delta, const int delta_offset,
                                     __global float *dk, const int dk_offset,
                                     __global float *dv, const int dv_offset, const int ld_d,
                                     const int N, const int H, const float scale)
{
    const int j = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    if (j >= N) return;
    float kj[DH], vj[DH], dk_acc[DH], dv_acc[DH];
    const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, j, h);
    const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, j, h);
    for (int c = 0; c < DH; ++c) { kj[c] = k_row[c] * scale; vj[c] = v_row[c]; dk_acc[c] = 0.0f; dv_acc[c] = 0.0f; }
    for (int i = 0; i < N; ++i) {
        const __global float *q_row = ROW(q, q_offset, ld_qkv, b, N, i, h);
        const __global float *do_row = ROW(d_o, d_o_offset, ld_o, b, N, i, h);
        float s = 0.0f, dp = 0.0f;
        for (int c = 0; c < DH; ++c) { s += q_row[c] * kj[c]; dp += do_row[c] * vj[c]; }
        const float p = exp(s - lse[lse_offset + (b * H + h) * N + i]);
        const float ds = p * (dp - delta[delta_offset + (b * H + h) * N + i]);
        for (int c = 0; c < DH; ++c) {
            dv_acc[c] += p * do_row[c];
            dk_acc[c] += ds * q_row[c];
        }
    }
    __global float *dk_row = ROW(dk, dk_offset, ld_d, b, N, j, h);
    __global float *dv_row = ROW(dv, dv_offset, ld_d, b, N, j, h);
    for (int c = 0; c < DH; ++c) { dk_row[c] = dk_acc[c] * scale; dv_row[c] = dv_acc[c]; }
}

// ---------------------------------------------------------------------------------------
// Block variants for CPUs: one work-item owns QB consecutive queries (or keys) and keeps one
// vector lane per query, so scores, the online softmax and every update are vertical vector
// FMAs (no horizontal reductions) and each k/v row loaded serves QB queries. Same math, same
// layouts, same lse/delta as the kernels above. Global (ceil(N / QB), H, B).
#ifndef QB
#define QB 16
#endif
#define QCAT_(a, b) a##b
#define QCAT(a, b) QCAT_(a, b)
#define floatQ QCAT(float, QB)

// Reads lane l of a block of QB rows starting at row t0 (rows past N read row N-1; their
// results are never stored).
#define LOAD_BLOCK(dst, base, offset, ld, scale_by)                                          \
    for (int c = 0; c < DH; ++c) {                                                           \
        float lanes[QB];                                                                     \
        for (int l = 0; l < QB; ++l)                                                         \
            lanes[l] = ROW(base, offset, ld, b, N, min(t0 + l, N - 1), h)[c] * (scale_by);   \
        dst[c] = QCAT(vload, QB)(0, lanes);                                                  \
    }

__kernel void attention_forward_block(__global const float *q, const int q_offset,
                                      __global const float *k, const int k_offset,
                                      __global const float *v, const int v_offset, const int ld_qkv,
                                      __global float *o, const int o_offset, const int ld_o,
                                      __global float *lse, const int lse_offset,
                                      const int N, const int H, const float scale)
{
    const int t0 = get_global_id(0) * QB, h = get_global_id(1), b = get_global_id(2);
    if (t0 >= N) return;
    floatQ qt[DH], acc[DH];
    LOAD_BLOCK(qt, q, q_offset, ld_qkv, scale)
    for (int c = 0; c < DH; ++c) acc[c] = (floatQ)(0.0f);
    floatQ running_max = (floatQ)(-INFINITY), running_sum = (floatQ)(0.0f);
    for (int j = 0; j < N; ++j) {
        const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, j, h);
        const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, j, h);
        floatQ s = (floatQ)(0.0f);
        for (int c = 0; c < DH; ++c) s = fma(qt[c], (floatQ)(k_row[c]), s);
        const floatQ new_max = fmax(running_max, s);
        const floatQ correction = exp(running_max - new_max);
        const floatQ p = exp(s - new_max);
        running_sum = running_sum * correction + p;
        for (int c = 0; c < DH; ++c) acc[c] = fma(p, (floatQ)(v_row[c]), acc[c] * correction);
        running_max = new_max;
    }
    const floatQ inverse = 1.0f / running_sum;
    const floatQ log_sum_exp = running_max + log(running_sum);
    float lanes[QB];
    for (int c = 0; c < DH; ++c) {
        QCAT(vstore, QB)(acc[c] * inverse, 0, lanes);
        for (int l = 0; l < QB && t0 + l < N; ++l) ROW(o, o_offset, ld_o, b, N, t0 + l, h)[c] = lanes[l];
    }
    QCAT(vstore, QB)(log_sum_exp, 0, lanes);
    for (int l = 0; l < QB && t0 + l < N; ++l) lse[lse_offset + (b * H + h) * N + t0 + l] = lanes[l];
}

// QB consecutive per-row scalars (lse or delta) from `row0`, padding lanes past N with row N-1.
inline floatQ load_lanes(__global const float *values, const int row0, const int t0, const int N)
{
    float lanes[QB];
    for (int l = 0; l < QB; ++l) lanes[l] = values[row0 + min(t0 + l, N - 1)];
    return QCAT(vload, QB)(0, lanes);
}

__kernel void attention_backward_dq_block(__global const float *q, const int q_offset,
                                          __global const float *k, const int k_offset,
                                          __global const float *v, const int v_offset, const int ld_qkv,
                                          __global const float *d_o, const int d_o_offset, const int ld_o,
                                          __global const float *lse, const int lse_offset,
                                          __global const float *delta, const int delta_offset,
                                          __global float *dq, const int dq_offset, const int ld_d,
                                          const int N, const int H, const float scale)
{
    const int t0 = get_global_id(0) * QB, h = get_global_id(1), b = get_global_id(2);
    if (t0 >= N) return;
    floatQ qt[DH], dot_[DH], acc[DH];
    LOAD_BLOCK(qt, q, q_offset, ld_qkv, scale)
    LOAD_BLOCK(dot_, d_o, d_o_offset, ld_o, 1.0f)
    for (int c = 0; c < DH; ++c) acc[c] = (floatQ)(0.0f);
    const floatQ lse_q = load_lanes(lse, lse_offset + (b * H + h) * N, t0, N);
    const floatQ delta_q = load_lanes(delta, delta_offset + (b * H + h) * N, t0, N);
    for (int j = 0; j < N; ++j) {
        const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, j, h);
        const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, j, h);
        floatQ s = (floatQ)(0.0f), dp = (floatQ)(0.0f);
        for (int c = 0; c < DH; ++c) {
            s = fma(qt[c], (floatQ)(k_row[c]), s);
            dp = fma(dot_[c], (floatQ)(v_row[c]), dp);
        }
        const floatQ ds = exp(s - lse_q) * (dp - delta_q);
        for (int c = 0; c < DH; ++c) acc[c] = fma(ds, (floatQ)(k_row[c]), acc[c]);
    }
    float lanes[QB];
    for (int c = 0; c < DH; ++c) {
        QCAT(vstore, QB)(acc[c] * scale, 0, lanes);
        for (int l = 0; l < QB && t0 + l < N; ++l) ROW(dq, dq_offset, ld_d, b, N, t0 + l, h)[c] = lanes[l];
    }
}

// Lanes are keys here: t0 is the first key of the block.
__kernel void attention_backward_dkv_block(__global const float *q, const int q_offset,
                                           __global const float *k, const int k_offset,
                                           __global const float *v, const int v_offset, const int ld_qkv,
                                           __global const float *d_o, const int d_o_offset, const int ld_o,
                                           __global const float *lse, const int lse_offset,
                                           __global const float *delta, const int delta_offset,
                                           __global float *dk, const int dk_offset,
                                           __global float *dv, const int dv_offset, const int ld_d,
                                           const int N, const int H, const float scale)
{
    const int t0 = get_global_id(0) * QB, h = get_global_id(1), b = get_global_id(2);
    if (t0 >= N) return;
    floatQ kt[DH], vt[DH], dk_acc[DH], dv_acc[DH];
    LOAD_BLOCK(kt, k, k_offset, ld_qkv, scale)
    LOAD_BLOCK(vt, v, v_offset, ld_qkv, 1.0f)
    for (int c = 0; c < DH; ++c) { dk_acc[c] = (floatQ)(0.0f); dv_acc[c] = (floatQ)(0.0f); }
    for (int i = 0; i < N; ++i) {
        const __global float *q_row = ROW(q, q_offset, ld_qkv, b, N, i, h);
        const __global float *do_row = ROW(d_o, d_o_offset, ld_o, b, N, i, h);
        floatQ s = (floatQ)(0.0f), dp = (floatQ)(0.0f);
        for (int c = 0; c < DH; ++c) {
            s = fma(kt[c], (floatQ)(q_row[c]), s);
            dp = fma(vt[c], (floatQ)(do_row[c]), dp);
        }
        const floatQ p = exp(s - lse[lse_offset + (b * H + h) * N + i]);
        const floatQ ds = p * (dp - delta[delta_offset + (b * H + h) * N + i]);
        for (int c = 0; c < DH; ++c) {
            dv_acc[c] = fma(p, (floatQ)(do_row[c]), dv_acc[c]);
            dk_acc[c] = fma(ds, (floatQ)(q_row[c]), dk_acc[c]);
        }
    }
    float lanes[QB];
    for (int c = 0; c < DH; ++c) {
        QCAT(vstore, QB)(dk_acc[c] * scale, 0, lanes);
        for (int l = 0; l < QB && t0 + l < N; ++l) ROW(dk, dk_offset, ld_d, b, N, t0 + l, h)[c] = lanes[l];
        QCAT(vstore, QB)(dv_acc[c], 0, lanes);
        for (int l = 0; l < QB && t0 + l < N; ++l) ROW(dv, dv_offset, ld_d, b, N, t0 + l, h)[c] = lanes[l];
    }
}
