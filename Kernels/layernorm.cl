// LayerNorm over the last dimension, forward and backward.
// Shapes: x, y, dy, dx [R, D] (row-major, R rows); gamma, beta, dgamma, dbeta [D];
// mean, rstd [R] saved by the forward for the backward.
// y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps), var the biased variance.

// One work-item per row; two passes (mean, then centred variance) for accuracy.
__kernel void layernorm_forward(__global const float *x, const int x_offset,
                                __global const float *gamma, const int gamma_offset,
                                __global const float *beta, const int beta_offset,
                                __global float *y, const int y_offset,
                                __global float *mean_out, const int mean_offset,
                                __global float *rstd_out, const int rstd_offset,
                                const int R, const int D, const float eps)
{
    const int row = get_global_id(0);
    if (row >= R) return;
    const __global float *xr = x + x_offset + row * D;
    float sum = 0.0f;
    for (int i = 0; i < D; ++i) sum += xr[i];
    const float mean = sum / D;
    float squares = 0.0f;
    for (int i = 0; i < D; ++i) { const float c = xr[i] - mean; squares += c * c; }
    const float rstd = 1.0f / sqrt(squares / D + eps);
    __global float *yr = y + y_offset + row * D;
    for (int i = 0; i < D; ++i)
        yr[i] = (xr[i] - mean) * rstd * gamma[gamma_offset + i] + beta[beta_offset + i];
    mean_out[mean_offset + row] = mean;
    rstd_out[rstd_offset + row] = rstd;
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, xhat = (x - mean) * rstd.
// accumulate != 0 adds into dx (the residual stream's gradient) instead of overwriting it.
__kernel void layernorm_backward_input(__global const float *dy, const int dy_offset,
                                       __global const float *x, const int x_offset,
                                       __global const float *gamma, const int gamma_offset,
                                       __global const float *mean_in, const int mean_offset,
                                       __global const float *rstd_in, const int rstd_offset,
                                       __global float *dx, const int dx_offset,
                                       const int R, const int D, const int accumulate)
{
    const int row = get_global_id(0);
    if (row >= R) return;
    const __global float *dyr = dy + dy_offset + row * D;
    const __global float *xr = x + x_offset + row * D;
    const float mean = mean_in[mean_offset + row], rstd = rstd_in[rstd_offset + row];
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int i = 0; i < D; ++i) {
        const float g = dyr[i] * gamma[gamma_offset + i];
        g_sum += g;
        gx_sum += g * (xr[i] - mean) * rstd;
    }
    const float g_mean = g_sum / D, gx_mean = gx_sum / D;
    __global float *dxr = dx + dx_offset + row * D;
    for (int i = 0; i < D; ++i) {
        const float xhat = (xr[i] - mean) * rstd;
        const float value = rstd * (dyr[i] * gamma[gamma_offset + i] - g_mean - xhat * gx_mean);
        dxr[i] = accumulate ? dxr[i] + value : value;
    }
}

// dgamma[c] (+)= sum_rows dy * xhat, dbeta[c] (+)= sum_rows dy. One work-item per column.
__kernel void layernorm_backward_params(__global const float *dy, const int dy_offset,
                                        __global const float *x, const int x_offset,
                                        __global const float *mean_in, const int mean_offset,
                                        __global const float *rstd_in, const int rstd_offset,
                                        __global float *dgamma, const int dgamma_offset,
                                        __global float *dbeta, const int dbeta_offset,
                                        const int R, const int D, const int accumulate)
{
    const int column = get_global_id(0);
    if (column >= D) return;
    float gamma_sum = 0.0f, beta_sum = 0.0f;
    for (int row = 0; row < R; ++row) {
        const float g = dy[dy_offset + row * D + column];
        gamma_sum += g * (x[x_offset + row * D + column] - mean_in[mean_offset + row]) * rstd_in[rstd_offset + row];
        beta_sum += g;
    }
    if (accumulate) {
        dgamma[dgamma_offset + column] += gamma_sum;
        dbeta[dbeta_offset + column] += beta_sum;
    } else {
        dgamma[dgamma_offset + column] = gamma_sum;
        dbeta[dbeta_offset + column] = beta_sum;
    }
}

// The same two row kernels for widths that are a multiple of 16, along the row in float16
// vectors. The scalar ones above leave the vectorising to the driver, which on PoCL's CPU
// device puts 16 rows in the lanes and gathers every element (about 5 GB/s).
inline float sum16(const float16 x)
{
    const float8 a = x.lo + x.hi;
    const float4 b = a.lo + a.hi;
    const float2 c = b.lo + b.hi;
    return c.x + c.y;
}

__kernel void layernorm_forward_vec(__global const float *x, const int x_offset,
                                    __global const float *gamma, const int gamma_offset,
                                    __global const float *beta, const int beta_offset,
                                    __global float *y, const int y_offset,
                                    __global float *mean_out, const int mean_offset,
                                    __global float *rstd_out, const int rstd_offset,
                                    const int R, const int D, const float eps)
{
    const int row = get_global_id(0);
    if (row >= R) return;
    const __global float *xr = x + x_offset + row * D;
    const int vectors = D / 16;
    float16 sum = (float16)(0.0f);
    for (int v = 0; v < vectors; ++v) sum += vload16(v, xr);
    const float mean = sum16(sum) / D;
    float16 squares = (float16)(0.0f);
    for (int v = 0; v < vectors; ++v) { const float16 c = vload16(v, xr) - mean; squares = fma(c, c, squares); }
    const float rstd = 1.0f / sqrt(sum16(squares) / D + eps);
    __global float *yr = y + y_offset + row * D;
    for (int v = 0; v < vectors; ++v)
        vstore16((vload16(v, xr) - mean) * rstd * vload16(v, gamma + gamma_offset) + vload16(v, beta + beta_offset), v, yr);
    mean_out[mean_offset + row] = mean;
    rstd_out[rstd_offset + row] = rstd;
}

__kernel void layernorm_backward_input_vec(__global const float *dy, const int dy_offset,
                                           __global const float *x, const int x_offset,
                                           __global const float *gamma, const int gamma_offset,
                                           __global const float *mean_in, const int mean_offset,
                                           __global const float *rstd_in, const int rstd_offset,
                                           __global float *dx, const int dx_offset,
                                           const int R, const int D, const int accumulate)
{
    const int row = get_global_id(0);
    if (row >= R) return;
    const __global float *dyr = dy + dy_offset + row * D;
    const __global float *xr = x + x_offset + row * D;
    const float mean = mean_in[mean_offset + row], rstd = rstd_in[rstd_offset + row];
    const int vectors = D / 16;
    float16 g_sum = (float16)(0.0f), gx_sum = (float16)(0.0f);
    for (int v = 0; v < vectors; ++v) {
        const float16 g = vload16(v, dyr) * vload16(v, gamma + gamma_offset);
        g_sum += g;
        gx_sum = fma(g, (vload16(v, xr) - mean) * rstd, gx_sum);
    }
    const float g_mean = sum16(g_sum) / D, gx_mean = sum16(gx_sum) / D;
    __global float *dxr = dx + dx_offset + row * D;
    for (int v = 0; v < vectors; ++v) {
        const float16 xhat = (vload16(v, xr) - mean) * rstd;
        const float16 value = rstd * (vload16(v, dyr) * vload16(v, gamma + gamma_offset) - g_mean - xhat * gx_mean);
        vstore16(accumulate ? vload16(v, dxr) + value : value, v, dxr);
    }
}

// ---------------------------------------------------------------------------------------
// Work-group row kernels for GPUs: a work-group of LG work-items (a power of two, whole warps)
// per row. Each work-item sums a strided part of the row, then a tree in __local with barriers
// combines the partial sums (no sub-group functions: NVIDIA's OpenCL C 1.2 has none). Same math
// and outputs as the kernels above: two passes for mean and centred variance. Global (LG, R),
// local (LG, 1).
#ifndef LG
#define LG 128
#endif

// The sum over the work-group of each work-item's `value` (every work-item gets it).
inline float group_sum(float value, __local float *scratch)
{
    const int t = get_local_id(0);
    scratch[t] = value;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = LG / 2; step > 0; step >>= 1) {
        if (t < step) scratch[t] += scratch[t + step];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float total = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);  // scratch is reused by the next sum
    return total;
}

__kernel __attribute__((reqd_work_group_size(LG, 1, 1)))
void layernorm_forward_group(__global const float *x, const int x_offset,
                             __global const float *gamma, const int gamma_offset,
                             __global const float *beta, const int beta_offset,
                             __global float *y, const int y_offset,
                             __global float *mean_out, const int mean_offset,
                             __global float *rstd_out, const int rstd_offset,
                             const int R, const int D, const float eps)
{
    __local float scratch[LG];
    const int t = get_local_id(0), row = get_group_id(1);
    const __global float *xr = x + x_offset + row * D;
    float sum = 0.0f;
    for (int i = t; i < D; i += LG) sum += xr[i];
    const float mean = group_sum(sum, scratch) / D;
    float squares = 0.0f;
    for (int i = t; i < D; i += LG) { const float c = xr[i] - mean; squares += c * c; }
    const float rstd = 1.0f / sqrt(group_sum(squares, scratch) / D + eps);
    __global float *yr = y + y_offset + row * D;
    for (int i = t; i < D; i += LG) yr[i] = (xr[i] - mean) * rstd * gamma[gamma_offset + i] + beta[beta_offset + i];
    if (t == 0) {
        mean_out[mean_offset + row] = mean;
        rstd_out[rstd_offset + row] = rstd;
    }
}

__kernel __attribute__((reqd_work_group_size(LG, 1, 1)))
void layernorm_backward_input_group(__global const float *dy, const int dy_offset,
                                    __global const float *x, const int x_offset,
                                    __global const float *gamma, const int gamma_offset,
                                    __global const float *mean_in, const int mean_offset,
                                    __global const float *rstd_in, const int rstd_offset,
                                    __global float *dx, const int dx_offset,
                                    const int R, const int D, const int accumulate)
{
    __local float scratch[LG];
    const int t = get_local_id(0), row = get_group_id(1);
    const __global float *dyr = dy + dy_offset + row * D;
    const __global float *xr = x + x_offset + row * D;
    const float mean = mean_in[mean_offset + row], rstd = rstd_in[rstd_offset + row];
    float g_sum = 0.0f, gx_sum = 0.0f;
    for (int i = t; i < D; i += LG) {
        const float g = dyr[i] * gamma[gamma_offset + i];
        g_sum += g;
        gx_sum += g * (xr[i] - mean) * rstd;
    }
    const float g_mean = group_sum(g_sum, scratch) / D, gx_mean = group_sum(gx_sum, scratch) / D;
    __global float *dxr = dx + dx_offset + row * D;
    for (int i = t; i < D; i += LG) {
        const float xhat = (xr[i] - mean) * rstd;
        const float value = rstd * (dyr[i] * gamma[gamma_offset + i] - g_mean - xhat * gx_mean);
        dxr[i] = accumulate ? dxr[i] + value : value;
    }
}

// GPUs: the parameter gradients as per-row-block partials (summed by column_sum_final in
// bias.cl). Global (D, P): partial[0][p][c] = sum over rows of block p of dy * xhat,
// partial[1][p][c] = of dy.
__kernel void layernorm_backward_params_partial(__global const float *dy, const int dy_offset,
                                                __global const float *x, const int x_offset,
                                                __global const float *mean_in, const int mean_offset,
                                                __global const float *rstd_in, const int rstd_offset,
                                                __global float *partial, const int R, const int D, const int RB, const int P)
{
    const int column = get_global_id(0), p = get_global_id(1);
    if (column >= D) return;
    const int end = min(R, (p + 1) * RB);
    float gamma_sum = 0.0f, beta_sum = 0.0f;
    for (int row = p * RB; row < end; ++row) {
        const float g = dy[dy_offset + row * D + column];
        gamma_sum += g * (x[x_offset + row * D + column] - mean_in[mean_offset + row]) * rstd_in[rstd_offset + row];
        beta_sum += g;
    }
    partial[p * D + column] = gamma_sum;
    partial[(P + p) * D + column] = beta_sum;
}
