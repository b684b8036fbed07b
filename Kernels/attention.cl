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

// ---------------------------------------------------------------------------------------
// Tiled variants for CPUs, shaped like the GEMM micro-kernel: a work-item owns MQ queries (MK
// keys in dkv) and computes their scores against KW = 16 keys (queries) at a time as vertical
// FMAs of one K^T (Q^T) vector by MQ broadcasts, then accumulates the rows of V, K (dO, Q) into
// MQ x (DH / VW) vector accumulators. Everything a work-item keeps fits in the 32 vector
// registers of AVX-512, which the block variants above (DH vectors of QB lanes each, spilled to
// the stack on every FMA) did not. The score operands are read transposed and zero-padded to
// NP = KW * ceil(N / KW) columns from [B, H, DH, NP] copies written by attention_transpose.
// Same math, layouts, lse and delta as the kernels above. Global (ceil(N / MQ), H, B).
#ifndef MQ
#define MQ 4
#endif
#ifndef MK
#define MK 2
#endif
#ifndef VW
#define VW 16
#endif
#define KW 16
#define ODV (DH / VW)
// Output vectors per pass of the tiled kernels' accumulation loops (a divisor of ODV): with
// XP < ODV a pass keeps MQ x XP (MK x XP) accumulators in registers over a block's keys
// (queries) instead of all MQ x ODV, which overflow AVX2's 16 registers; XP = ODV is one pass.
#ifndef XP
#define XP ODV
#endif
#define floatV QCAT(float, VW)
#define vloadV QCAT(vload, VW)
#define vstoreV QCAT(vstore, VW)

inline float horizontal_max(const float16 x)
{
    const float8 a = fmax(x.lo, x.hi);
    const float4 b = fmax(a.lo, a.hi);
    const float2 c = fmax(b.lo, b.hi);
    return fmax(c.x, c.y);
}

inline float horizontal_sum(const float16 x)
{
    const float8 a = x.lo + x.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
}

// t[((b * H + h) * DH + c) * NP + n] = x[row (b, n)][h * DH + c] for n < N, 0 up to NP.
// One work-item per KW-token tile: its KW rows stay in L1 while it writes each feature's KW
// tokens as one vector (a work-item per token wrote one float per cache line). Global
// (NP / KW, H, B).
__kernel void attention_transpose(__global const float *x, const int x_offset, const int ld,
                                  __global float *t, const int t_offset, const int N, const int NP, const int H)
{
    const int n0 = get_global_id(0) * KW, h = get_global_id(1), b = get_global_id(2);
    __global float *tile = t + t_offset + (size_t)(b * H + h) * DH * NP + n0;
    const int16 lane = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const int16 valid = lane < (int16)(N - n0);
    const __global float *rows[KW];
#pragma unroll
    for (int l = 0; l < KW; ++l) rows[l] = ROW(x, x_offset, ld, b, N, min(n0 + l, N - 1), h);
    for (int c = 0; c < DH; ++c) {
        float lanes[KW];
#pragma unroll
        for (int l = 0; l < KW; ++l) lanes[l] = rows[l][c];
        vstore16(select((float16)(0.0f), vload16(0, lanes), valid), 0, tile + c * NP);
    }
}

// Rows past N re-read row N - 1; their results are never stored.
#define LOAD_ROWS(dst, rows, base, offset, ld, first, scale_by)                              \
    for (int r = 0; r < rows; ++r) {                                                         \
        const __global float *source = ROW(base, offset, ld, b, N, min(first + r, N - 1), h); \
        for (int c = 0; c < DH; ++c) dst[r][c] = source[c] * (scale_by);                     \
    }

__kernel void attention_forward_tiled(__global const float *q, const int q_offset,
                                      __global const float *kt, const int kt_offset,
                                      __global const float *v, const int v_offset, const int ld_qkv,
                                      __global float *o, const int o_offset, const int ld_o,
                                      __global float *lse, const int lse_offset,
                                      const int N, const int NP, const int H, const float scale)
{
    const int i0 = get_global_id(0) * MQ, h = get_global_id(1), b = get_global_id(2);
    if (i0 >= N) return;
    float qs[MQ][DH];
    LOAD_ROWS(qs, MQ, q, q_offset, ld_qkv, i0, scale)
    floatV acc[MQ][ODV];
    float running_max[MQ], running_sum[MQ], p_tile[MQ][KW];
    #pragma unroll
    for (int r = 0; r < MQ; ++r) {
        running_max[r] = -INFINITY;
        running_sum[r] = 0.0f;
        #pragma unroll
        for (int x = 0; x < ODV; ++x) acc[r][x] = (floatV)(0.0f);
    }
    const int16 lane = (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __global float *kt_head = kt + kt_offset + (size_t)(b * H + h) * DH * NP;

    for (int j0 = 0; j0 < N; j0 += KW) {
        float16 s[MQ];
        #pragma unroll
        for (int r = 0; r < MQ; ++r) s[r] = (float16)(0.0f);
        for (int c = 0; c < DH; ++c) {
            const float16 key = vload16(0, kt_head + c * NP + j0);
            #pragma unroll
            for (int r = 0; r < MQ; ++r) s[r] = fma((float16)(qs[r][c]), key, s[r]);
        }
        const int count = min(KW, N - j0);
        #pragma unroll
        for (int r = 0; r < MQ; ++r) {
            // Padding keys must not enter the max or the sum.
            if (count < KW) s[r] = select(s[r], (float16)(-INFINITY), lane >= (int16)(count));
            const float new_max = fmax(running_max[r], horizontal_max(s[r]));
            const float correction = exp(running_max[r] - new_max);  // 0 on the first block
            const float16 p = exp(s[r] - new_max);
            running_sum[r] = running_sum[r] * correction + horizontal_sum(p);
            running_max[r] = new_max;
            #pragma unroll
            for (int x = 0; x < ODV; ++x) acc[r][x] *= correction;
            vstore16(p, 0, p_tile[r]);
        }
        // Feature vectors outermost, XP at a time: a pass keeps MQ x XP accumulators in registers
        // over the block's keys (each accumulator still sums its keys in order).
        #pragma unroll
        for (int x = 0; x < ODV; x += XP) {
            for (int jj = 0; jj < count; ++jj) {
                const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, j0 + jj, h);
                #pragma unroll
                for (int xx = 0; xx < XP; ++xx) {
                    const floatV value = vloadV(x + xx, v_row);
                    #pragma unroll
                    for (int r = 0; r < MQ; ++r) acc[r][x + xx] = fma((floatV)(p_tile[r][jj]), value, acc[r][x + xx]);
                }
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < MQ && i0 + r < N; ++r) {
        const float inverse = 1.0f / running_sum[r];
        __global float *o_row = ROW(o, o_offset, ld_o, b, N, i0 + r, h);
        #pragma unroll
        for (int x = 0; x < ODV; ++x) vstoreV(acc[r][x] * inverse, x, o_row);
        lse[lse_offset + (b * H + h) * N + i0 + r] = running_max[r] + log(running_sum[r]);
    }
}

// kt, vt: K^T and V^T as written by attention_transpose.
__kernel void attention_backward_dq_tiled(__global const float *q, const int q_offset,
                                          __global const float *k, const int k_offset, const int ld_qkv,
                                          __global const float *kt, const int kt_offset, __global const float *vt, const int vt_offset,
                                          __global const float *d_o, const int d_o_offset, const int ld_o,
                                          __global const float *lse, const int lse_offset,
                                          __global const float *delta, const int delta_offset,
                                          __global float *dq, const int dq_offset, const int ld_d,
                                          const int N, const int NP, const int H, const float scale)
{
    const int i0 = get_global_id(0) * MQ, h = get_global_id(1), b = get_global_id(2);
    if (i0 >= N) return;
    float qs[MQ][DH], dos[MQ][DH], lse_r[MQ], delta_r[MQ], ds_tile[MQ][KW];
    LOAD_ROWS(qs, MQ, q, q_offset, ld_qkv, i0, scale)
    LOAD_ROWS(dos, MQ, d_o, d_o_offset, ld_o, i0, 1.0f)
    floatV acc[MQ][ODV];
    #pragma unroll
    for (int r = 0; r < MQ; ++r) {
        const int row = (b * H + h) * N + min(i0 + r, N - 1);
        lse_r[r] = lse[lse_offset + row];
        delta_r[r] = delta[delta_offset + row];
        #pragma unroll
        for (int x = 0; x < ODV; ++x) acc[r][x] = (floatV)(0.0f);
    }
    const __global float *kt_head = kt + kt_offset + (size_t)(b * H + h) * DH * NP;
    const __global float *vt_head = vt + vt_offset + (size_t)(b * H + h) * DH * NP;

    for (int j0 = 0; j0 < N; j0 += KW) {
        float16 s[MQ], dp[MQ];
        #pragma unroll
        for (int r = 0; r < MQ; ++r) { s[r] = (float16)(0.0f); dp[r] = (float16)(0.0f); }
        for (int c = 0; c < DH; ++c) {
            const float16 key = vload16(0, kt_head + c * NP + j0), value = vload16(0, vt_head + c * NP + j0);
            #pragma unroll
            for (int r = 0; r < MQ; ++r) {
                s[r] = fma((float16)(qs[r][c]), key, s[r]);
                dp[r] = fma((float16)(dos[r][c]), value, dp[r]);
            }
        }
        // Lanes of padding keys are computed but never read below.
        #pragma unroll
        for (int r = 0; r < MQ; ++r) vstore16(exp(s[r] - lse_r[r]) * (dp[r] - delta_r[r]), 0, ds_tile[r]);
        const int count = min(KW, N - j0);
        for (int jj = 0; jj < count; ++jj) {
            const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, j0 + jj, h);
            #pragma unroll
            for (int x = 0; x < ODV; ++x) {
                const floatV key = vloadV(x, k_row);
                #pragma unroll
                for (int r = 0; r < MQ; ++r) acc[r][x] = fma((floatV)(ds_tile[r][jj]), key, acc[r][x]);
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < MQ && i0 + r < N; ++r) {
        __global float *dq_row = ROW(dq, dq_offset, ld_d, b, N, i0 + r, h);
        #pragma unroll
        for (int x = 0; x < ODV; ++x) vstoreV(acc[r][x] * scale, x, dq_row);
    }
}

// Lanes are queries: qt, dot are Q^T and dO^T from attention_transpose; a work-item owns MK
// keys. With store_ds it also writes dS^T (without the scale) to ds_t [B, H, N keys, NP queries],
// zeros in the padding lanes, for attention_backward_dq_ds_tiled. Global (ceil(N / MK), H, B).
__kernel void attention_backward_dkv_tiled(__global const float *q, const int q_offset,
                                           __global const float *k, const int k_offset,
                                           __global const float *v, const int v_offset, const int ld_qkv,
                                           __global const float *qt, const int qt_offset, __global const float *dot, const int dot_offset,
                                           __global const float *d_o, const int d_o_offset, const int ld_o,
                                           __global const float *lse, const int lse_offset,
                                           __global const float *delta, const int delta_offset,
                                           __global float *dk, const int dk_offset,
                                           __global float *dv, const int dv_offset, const int ld_d,
                                           const int N, const int NP, const int H, const float scale,
                                           __global float *ds_t, const int ds_offset, const int store_ds)
{
    const int j0 = get_global_id(0) * MK, h = get_global_id(1), b = get_global_id(2);
    if (j0 >= N) return;
    float ks[MK][DH], vs[MK][DH], p_tile[MK][KW], ds_tile[MK][KW];
    LOAD_ROWS(ks, MK, k, k_offset, ld_qkv, j0, scale)
    LOAD_ROWS(vs, MK, v, v_offset, ld_qkv, j0, 1.0f)
    floatV dk_acc[MK][ODV], dv_acc[MK][ODV];
    #pragma unroll
    for (int r = 0; r < MK; ++r)
        #pragma unroll
        for (int x = 0; x < ODV; ++x) { dk_acc[r][x] = (floatV)(0.0f); dv_acc[r][x] = (floatV)(0.0f); }
    const __global float *qt_head = qt + qt_offset + (size_t)(b * H + h) * DH * NP;
    const __global float *dot_head = dot + dot_offset + (size_t)(b * H + h) * DH * NP;
    const __global float *lse_head = lse + lse_offset + (b * H + h) * N;
    const __global float *delta_head = delta + delta_offset + (b * H + h) * N;

    for (int i0 = 0; i0 < N; i0 += KW) {
        const int count = min(KW, N - i0);
        float16 lse_q, delta_q;
        if (count == KW) {
            lse_q = vload16(0, lse_head + i0);
            delta_q = vload16(0, delta_head + i0);
        } else {
            // Padding queries get lse = +inf, so their probabilities are exactly 0.
            float lanes_lse[KW], lanes_delta[KW];
            for (int l = 0; l < KW; ++l) {
                lanes_lse[l] = l < count ? lse_head[i0 + l] : INFINITY;
                lanes_delta[l] = l < count ? delta_head[i0 + l] : 0.0f;
            }
            lse_q = vload16(0, lanes_lse);
            delta_q = vload16(0, lanes_delta);
        }
        float16 s[MK], dp[MK];
        #pragma unroll
        for (int r = 0; r < MK; ++r) { s[r] = (float16)(0.0f); dp[r] = (float16)(0.0f); }
        for (int c = 0; c < DH; ++c) {
            const float16 query = vload16(0, qt_head + c * NP + i0), gradient = vload16(0, dot_head + c * NP + i0);
            #pragma unroll
            for (int r = 0; r < MK; ++r) {
                s[r] = fma((float16)(ks[r][c]), query, s[r]);
                dp[r] = fma((float16)(vs[r][c]), gradient, dp[r]);
            }
        }
        #pragma unroll
        for (int r = 0; r < MK; ++r) {
            const float16 p = exp(s[r] - lse_q), ds = p * (dp[r] - delta_q);
            vstore16(p, 0, p_tile[r]);
            vstore16(ds, 0, ds_tile[r]);
            if (store_ds && j0 + r < N) vstore16(ds, 0, ds_t + ds_offset + ((size_t)(b * H + h) * N + j0 + r) * NP + i0);
        }
        // As in the forward: feature vectors outermost, XP at a time.
        #pragma unroll
        for (int x = 0; x < ODV; x += XP) {
            for (int ii = 0; ii < count; ++ii) {
                const __global float *q_row = ROW(q, q_offset, ld_qkv, b, N, i0 + ii, h);
                const __global float *do_row = ROW(d_o, d_o_offset, ld_o, b, N, i0 + ii, h);
                #pragma unroll
                for (int xx = 0; xx < XP; ++xx) {
                    const floatV query = vloadV(x + xx, q_row), gradient = vloadV(x + xx, do_row);
                    #pragma unroll
                    for (int r = 0; r < MK; ++r) {
                        dv_acc[r][x + xx] = fma((floatV)(p_tile[r][ii]), gradient, dv_acc[r][x + xx]);
                        dk_acc[r][x + xx] = fma((floatV)(ds_tile[r][ii]), query, dk_acc[r][x + xx]);
                    }
                }
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < MK && j0 + r < N; ++r) {
        __global float *dk_row = ROW(dk, dk_offset, ld_d, b, N, j0 + r, h);
        __global float *dv_row = ROW(dv, dv_offset, ld_d, b, N, j0 + r, h);
        #pragma unroll
        for (int x = 0; x < ODV; ++x) {
            vstoreV(dk_acc[r][x] * scale, x, dk_row);
            vstoreV(dv_acc[r][x], x, dv_row);
        }
    }
}

// dQ from the dS^T that attention_backward_dkv_tiled stored, so the scores and dP are computed
// once for both gradients (the dq kernel above recomputes them: 3 of the backward's 7 N x N x DH
// products become 1). dQ_i[c] = scale sum_j K^T[c][j] dS^T[j][i]: a work-item owns KW queries
// (the lanes, like the dkv kernel's) and DC features, DC accumulators of KW lanes fed by one
// vector load of dS^T and DC broadcasts of K^T per key, as in the GEMM micro-kernel. K^T from
// attention_transpose. Global (NP / KW * DH / DC, H, B).
#ifndef DC
#define DC 4
#endif
__kernel void attention_backward_dq_ds_tiled(__global const float *kt, const int kt_offset,
                                             __global const float *ds_t, const int ds_offset,
                                             __global float *dq, const int dq_offset, const int ld_d,
                                             const int N, const int NP, const int H, const float scale)
{
    const int tiles = NP / KW;
    const int i0 = (get_global_id(0) % tiles) * KW, c0 = (get_global_id(0) / tiles) * DC;
    const int h = get_global_id(1), b = get_global_id(2);
    if (c0 >= DH) return;
    const __global float *kt_rows = kt + kt_offset + ((size_t)(b * H + h) * DH + c0) * NP;
    const __global float *ds_columns = ds_t + ds_offset + (size_t)(b * H + h) * N * NP + i0;
    float16 acc[DC];
    #pragma unroll
    for (int c = 0; c < DC; ++c) acc[c] = (float16)(0.0f);
    for (int j = 0; j < N; ++j) {
        const float16 ds = vload16(0, ds_columns + (size_t)j * NP);
        #pragma unroll
        for (int c = 0; c < DC; ++c) acc[c] = fma((float16)(kt_rows[c * NP + j]), ds, acc[c]);
    }
    #pragma unroll
    for (int c = 0; c < DC; ++c) {
        float lanes[KW];
        vstore16(acc[c] * scale, 0, lanes);
        for (int l = 0; l < KW && i0 + l < N; ++l) ROW(dq, dq_offset, ld_d, b, N, i0 + l, h)[c0 + c] = lanes[l];
    }
}

// ---------------------------------------------------------------------------------------
// Flash kernels for GPUs (FlashAttention-2's work split): a work-group of FB work-items owns FB
// queries (forward, dq) or FB keys (dkv), one row per work-item with its accumulators in
// registers, and streams the other side in tiles of FB rows staged in __local by the whole
// group (coalesced row copies, then broadcast reads: every work-item reads the same element).
// Rows past N are loaded as zeros and masked (probability 0), so every work-item takes part in
// every barrier. No atomics: dK/dV and dQ come from separate kernels, each row summed by the
// one work-item that owns it, in a fixed order, so results are deterministic.
// Global (ceil(N / FB) FB, H, B), local (FB, 1, 1). __local: 2 FB DH floats (+ 2 FB for dkv).
#ifndef FB
#define FB 64
#endif

// Copies rows t0 .. t0 + FB - 1 of one head into tile[FB][DH] (zeros past N), optionally scaled.
inline void load_tile(__local float *tile, const __global float *base, const int offset, const int ld,
                      const int b, const int N, const int t0, const int h, const float scale_by)
{
    for (int e = get_local_id(0); e < FB * DH; e += FB) {
        const int r = e / DH, c = e - r * DH;
        tile[e] = t0 + r < N ? ROW(base, offset, ld, b, N, t0 + r, h)[c] * scale_by : 0.0f;
    }
}

__kernel __attribute__((reqd_work_group_size(FB, 1, 1)))
void attention_forward_flash(__global const float *q, const int q_offset,
                             __global const float *k, const int k_offset,
                             __global const float *v, const int v_offset, const int ld_qkv,
                             __global float *o, const int o_offset, const int ld_o,
                             __global float *lse, const int lse_offset,
                             const int N, const int H, const float scale)
{
    __local float Ks[FB * DH], Vs[FB * DH];
    const int i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const bool live = i < N;
    float qi[DH], acc[DH];
    const __global float *q_row = ROW(q, q_offset, ld_qkv, b, N, min(i, N - 1), h);
    for (int c = 0; c < DH; ++c) { qi[c] = q_row[c] * scale; acc[c] = 0.0f; }
    float running_max = -INFINITY, running_sum = 0.0f;
    for (int j0 = 0; j0 < N; j0 += FB) {
        load_tile(Ks, k, k_offset, ld_qkv, b, N, j0, h, 1.0f);
        load_tile(Vs, v, v_offset, ld_qkv, b, N, j0, h, 1.0f);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int count = min(FB, N - j0);
        float s[FB];
        float block_max = -INFINITY;
        for (int jj = 0; jj < count; ++jj) {
            float dot = 0.0f;
            for (int c = 0; c < DH; ++c) dot += qi[c] * Ks[jj * DH + c];
            s[jj] = dot;
            block_max = fmax(block_max, dot);
        }
        const float new_max = fmax(running_max, block_max);
        const float correction = exp(running_max - new_max);
        running_sum *= correction;
        for (int c = 0; c < DH; ++c) acc[c] *= correction;
        for (int jj = 0; jj < count; ++jj) {
            const float p = exp(s[jj] - new_max);
            running_sum += p;
            for (int c = 0; c < DH; ++c) acc[c] += p * Vs[jj * DH + c];
        }
        running_max = new_max;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (!live) return;
    const float inverse = 1.0f / running_sum;
    __global float *o_row = ROW(o, o_offset, ld_o, b, N, i, h);
    for (int c = 0; c < DH; ++c) o_row[c] = acc[c] * inverse;
    lse[lse_offset + (b * H + h) * N + i] = running_max + log(running_sum);
}

// dQ_i = scale sum_j P_ij (dO_i . V_j - delta_i) K_j, K and V in tiles.
__kernel __attribute__((reqd_work_group_size(FB, 1, 1)))
void attention_backward_dq_flash(__global const float *q, const int q_offset,
                                 __global const float *k, const int k_offset,
                                 __global const float *v, const int v_offset, const int ld_qkv,
                                 __global const float *d_o, const int d_o_offset, const int ld_o,
                                 __global const float *lse, const int lse_offset,
                                 __global const float *delta, const int delta_offset,
                                 __global float *dq, const int dq_offset, const int ld_d,
                                 const int N, const int H, const float scale)
{
    __local float Ks[FB * DH], Vs[FB * DH];
    const int i = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const int row = min(i, N - 1);
    float qi[DH], doi[DH], acc[DH];
    const __global float *q_row = ROW(q, q_offset, ld_qkv, b, N, row, h);
    const __global float *do_row = ROW(d_o, d_o_offset, ld_o, b, N, row, h);
    for (int c = 0; c < DH; ++c) { qi[c] = q_row[c] * scale; doi[c] = do_row[c]; acc[c] = 0.0f; }
    const float lse_i = lse[lse_offset + (b * H + h) * N + row];
    const float delta_i = delta[delta_offset + (b * H + h) * N + row];
    for (int j0 = 0; j0 < N; j0 += FB) {
        load_tile(Ks, k, k_offset, ld_qkv, b, N, j0, h, 1.0f);
        load_tile(Vs, v, v_offset, ld_qkv, b, N, j0, h, 1.0f);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int count = min(FB, N - j0);
        for (int jj = 0; jj < count; ++jj) {
            float s = 0.0f, dp = 0.0f;
            for (int c = 0; c < DH; ++c) { s += qi[c] * Ks[jj * DH + c]; dp += doi[c] * Vs[jj * DH + c]; }
            const float ds = exp(s - lse_i) * (dp - delta_i);
            for (int c = 0; c < DH; ++c) acc[c] += ds * Ks[jj * DH + c];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (i >= N) return;
    __global float *dq_row = ROW(dq, dq_offset, ld_d, b, N, i, h);
    for (int c = 0; c < DH; ++c) dq_row[c] = acc[c] * scale;
}

// dV_j = sum_i P_ij dO_i; dK_j = scale sum_i P_ij (dO_i . V_j - delta_i) Q_i, Q and dO in tiles
// (Q pre-scaled), with the tile's lse and delta.
__kernel __attribute__((reqd_work_group_size(FB, 1, 1)))
void attention_backward_dkv_flash(__global const float *q, const int q_offset,
                                  __global const float *k, const int k_offset,
                                  __global const float *v, const int v_offset, const int ld_qkv,
                                  __global const float *d_o, const int d_o_offset, const int ld_o,
                                  __global const float *lse, const int lse_offset,
                                  __global const float *delta, const int delta_offset,
                                  __global float *dk, const int dk_offset,
                                  __global float *dv, const int dv_offset, const int ld_d,
                                  const int N, const int H, const float scale)
{
    __local float Qs[FB * DH], Ds[FB * DH], Ls[FB], Es[FB];
    const int j = get_global_id(0), h = get_global_id(1), b = get_global_id(2);
    const int row = min(j, N - 1);
    float kj[DH], vj[DH], dk_acc[DH], dv_acc[DH];
    const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, row, h);
    const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, row, h);
    for (int c = 0; c < DH; ++c) { kj[c] = k_row[c]; vj[c] = v_row[c]; dk_acc[c] = 0.0f; dv_acc[c] = 0.0f; }
    const int stats = (b * H + h) * N;
    for (int i0 = 0; i0 < N; i0 += FB) {
        load_tile(Qs, q, q_offset, ld_qkv, b, N, i0, h, scale);
        load_tile(Ds, d_o, d_o_offset, ld_o, b, N, i0, h, 1.0f);
        const int t = get_local_id(0);
        Ls[t] = i0 + t < N ? lse[lse_offset + stats + i0 + t] : 0.0f;
        Es[t] = i0 + t < N ? delta[delta_offset + stats + i0 + t] : 0.0f;
        barrier(CLK_LOCAL_MEM_FENCE);
        const int count = min(FB, N - i0);
        for (int ii = 0; ii < count; ++ii) {
            float s = 0.0f, dp = 0.0f;
            for (int c = 0; c < DH; ++c) { s += Qs[ii * DH + c] * kj[c]; dp += Ds[ii * DH + c] * vj[c]; }
            const float p = exp(s - Ls[ii]);
            const float ds = p * (dp - Es[ii]);
            for (int c = 0; c < DH; ++c) {
                dv_acc[c] += p * Ds[ii * DH + c];
                dk_acc[c] += ds * Qs[ii * DH + c];
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (j >= N) return;
    __global float *dk_row = ROW(dk, dk_offset, ld_d, b, N, j, h);
    __global float *dv_row = ROW(dv, dv_offset, ld_d, b, N, j, h);
    // Q was scaled in the tile: dK = scale sum ds Q = sum ds (scale Q).
    for (int c = 0; c < DH; ++c) { dk_row[c] = dk_acc[c]; dv_row[c] = dv_acc[c]; }
}

// The same two gradients from two kernels (the split backward): the fused one above keeps four
// rows of DH floats per work-item (k, v and both accumulators: 256 registers at DH 64, past
// NVIDIA's 255, so it spills; it ran at 0.34-0.37 of the GEMM rate on an H200 where dq, with
// three rows, ran at 0.64-0.70). dV needs k and its accumulator, dK k, v and its accumulator:
// the scores are computed twice (5 of the fused kernel's 4 N x N x DH products) in exchange.
// Same arguments as attention_backward_dkv_flash; each writes one of dk, dv. Opt-in
// (SLORAGPU_FLASH_SPLIT=1) until a GPU run has timed it against the fused kernel.
#define FLASH_KEY_GRADIENT(NAME, WITH_DK) \
__kernel __attribute__((reqd_work_group_size(FB, 1, 1))) \
void NAME(__global const float *q, const int q_offset, __global const float *k, const int k_offset, \
          __global const float *v, const int v_offset, const int ld_qkv, \
          __global const float *d_o, const int d_o_offset, const int ld_o, \
          __global const float *lse, const int lse_offset, __global const float *delta, const int delta_offset, \
          __global float *dk, const int dk_offset, __global float *dv, const int dv_offset, const int ld_d, \
          const int N, const int H, const float scale) \
{ \
    __local float Qs[FB * DH], Ds[FB * DH], Ls[FB], Es[FB]; \
    const int j = get_global_id(0), h = get_global_id(1), b = get_global_id(2); \
    const int row = min(j, N - 1); \
    float kj[DH], vj[WITH_DK ? DH : 1], acc[DH]; \
    const __global float *k_row = ROW(k, k_offset, ld_qkv, b, N, row, h); \
    const __global float *v_row = ROW(v, v_offset, ld_qkv, b, N, row, h); \
    for (int c = 0; c < DH; ++c) { kj[c] = k_row[c]; acc[c] = 0.0f; } \
    if (WITH_DK) for (int c = 0; c < DH; ++c) vj[c] = v_row[c]; \
    const int stats = (b * H + h) * N; \
    for (int i0 = 0; i0 < N; i0 += FB) { \
        load_tile(Qs, q, q_offset, ld_qkv, b, N, i0, h, scale); \
        load_tile(Ds, d_o, d_o_offset, ld_o, b, N, i0, h, 1.0f); \
        const int t = get_local_id(0); \
        Ls[t] = i0 + t < N ? lse[lse_offset + stats + i0 + t] : 0.0f; \
        Es[t] = i0 + t < N ? delta[delta_offset + stats + i0 + t] : 0.0f; \
        barrier(CLK_LOCAL_MEM_FENCE); \
        const int count = min(FB, N - i0); \
        for (int ii = 0; ii < count; ++ii) { \
            float s = 0.0f; \
            for (int c = 0; c < DH; ++c) s += Qs[ii * DH + c] * kj[c]; \
            const float p = exp(s - Ls[ii]); \
            if (WITH_DK) { \
                float dp = 0.0f; \
                for (int c = 0; c < DH; ++c) dp += Ds[ii * DH + c] * vj[c]; \
                const float ds = p * (dp - Es[ii]); \
                for (int c = 0; c < DH; ++c) acc[c] += ds * Qs[ii * DH + c]; \
            } else { \
                for (int c = 0; c < DH; ++c) acc[c] += p * Ds[ii * DH + c]; \
            } \
        } \
        barrier(CLK_LOCAL_MEM_FENCE); \
    } \
    if (j >= N) return; \
    __global float *out_row = WITH_DK ? ROW(dk, dk_offset, ld_d, b, N, j, h) : ROW(dv, dv_offset, ld_d, b, N, j, h); \
    for (int c = 0; c < DH; ++c) out_row[c] = acc[c]; \
}
FLASH_KEY_GRADIENT(attention_backward_dk_flash, 1)
FLASH_KEY_GRADIENT(attention_backward_dv_flash, 0)
