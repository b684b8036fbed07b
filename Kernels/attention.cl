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
