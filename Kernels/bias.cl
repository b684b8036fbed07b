// Bias add and its gradient. y, dy [R, C] row-major; bias, dbias [C].

// y[r, c] += bias[c]
__kernel void bias_add(__global float *y, const int y_offset, __global const float *bias, const int bias_offset,
                       const int R, const int C)
{
    const int i = get_global_id(0);
    if (i >= R * C) return;
    y[y_offset + i] += bias[bias_offset + i % C];
}

// out[c] (+)= sum_r dy[r, c]: column sums, one work-item per column (adjacent work-items read
// adjacent addresses).
__kernel void column_sum(__global const float *dy, const int dy_offset, __global float *out, const int out_offset,
                         const int R, const int C, const int accumulate)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    float sum = 0.0f;
    for (int r = 0; r < R; ++r) sum += dy[dy_offset + r * C + c];
    out[out_offset + c] = accumulate ? out[out_offset + c] + sum : sum;
}

// GPUs: column sums in two passes, so that many work-groups share the rows. column_sum_partial,
// global (C, P): work-item (c, p) sums rows [p RB, (p + 1) RB) of column c into partial[p][c]
// (adjacent work-items read adjacent addresses); column_sum_final, global (C): sums the P
// partials of column c in a fixed order (deterministic, no atomics).
__kernel void column_sum_partial(__global const float *dy, const int dy_offset, __global float *partial,
                                 const int R, const int C, const int RB)
{
    const int c = get_global_id(0), p = get_global_id(1);
    if (c >= C) return;
    const int end = min(R, (p + 1) * RB);
    float sum = 0.0f;
    for (int r = p * RB; r < end; ++r) sum += dy[dy_offset + r * C + c];
    partial[p * C + c] = sum;
}

__kernel void column_sum_final(__global const float *partial, const int partial_offset, const int P,
                               __global float *out, const int out_offset, const int C, const int accumulate)
{
    const int c = get_global_id(0);
    if (c >= C) return;
    float sum = 0.0f;
    for (int p = 0; p < P; ++p) sum += partial[partial_offset + p * C + c];
    out[out_offset + c] = accumulate ? out[out_offset + c] + sum : sum;
}
