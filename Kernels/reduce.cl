// Sums over a flat range, in two launches so the result never visits the host:
//   reduce_partial: G work-items, item g sums x[i] (or x[i]^2) for i = g, g + G, ... with
//                   Kahan compensation, into partial[g];
//   reduce_final:   one work-item sums the G partials into out[0] (times scale).

__kernel void reduce_partial(__global const float *x, const int x_offset, const int n,
                             __global float *partial, const int squares)
{
    const int g = get_global_id(0);
    const int stride = get_global_size(0);
    float sum = 0.0f, compensation = 0.0f;
    for (int i = g; i < n; i += stride) {
        const float v = x[x_offset + i];
        const float term = (squares ? v * v : v) - compensation;
        const float next = sum + term;
        compensation = (next - sum) - term;
        sum = next;
    }
    partial[g] = sum;
}

__kernel void reduce_final(__global const float *partial, const int count,
                           __global float *out, const int out_offset, const float scale)
{
    if (get_global_id(0) != 0) return;
    float sum = 0.0f, compensation = 0.0f;
    for (int i = 0; i < count; ++i) {
        const float term = partial[i] - compensation;
        const float next = sum + term;
        compensation = (next - sum) - term;
        sum = next;
    }
    out[out_offset] = sum * scale;
}
