// Exact (erf) GELU, forward and backward, elementwise over n values.
// gelu(x) = 0.5 x (1 + erf(x / sqrt 2)); gelu'(x) = Phi(x) + x phi(x).

__kernel void gelu_forward(__global const float *x, const int x_offset,
                           __global float *y, const int y_offset, const int n)
{
    const int i = get_global_id(0);
    if (i >= n) return;
    const float v = x[x_offset + i];
    y[y_offset + i] = 0.5f * v * (1.0f + erf(v * 0.70710678118654752f));
}

// dx = dy * gelu'(x), x the pre-activation.
__kernel void gelu_backward(__global const float *x, const int x_offset,
                            __global const float *dy, const int dy_offset,
                            __global float *dx, const int dx_offset, const int n)
{
    const int i = get_global_id(0);
    if (i >= n) return;
    const float v = x[x_offset + i];
    const float cdf = 0.5f * (1.0f + erf(v * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * exp(-0.5f * v * v);
    dx[dx_offset + i] = dy[dy_offset + i] * (cdf + v * pdf);
}
