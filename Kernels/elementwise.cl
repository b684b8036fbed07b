// Elementwise fp32 operations over flat ranges of buffers.
//
// Layout: every tensor argument is a buffer plus an element offset (views are offsets into
// a pooled buffer; OpenCL 1.2 sub-buffers would demand CL_DEVICE_MEM_BASE_ADDR_ALIGN).
// One work-item computes one element; the launcher sizes the grid to exactly n, and the
// guard only protects drivers that round the grid up.

__kernel void fill_f32(__global float *y, const int y_offset, const int n, const float value)
{
    const int i = get_global_id(0);
    if (i < n) y[y_offset + i] = value;
}

// y = a + b
__kernel void add_f32(__global const float *a, const int a_offset,
                      __global const float *b, const int b_offset,
                      __global float *y, const int y_offset, const int n)
{
    const int i = get_global_id(0);
    if (i < n) y[y_offset + i] = a[a_offset + i] + b[b_offset + i];
}

// y = alpha * x (x and y may be the same range)
__kernel void scale_f32(__global const float *x, const int x_offset,
                        __global float *y, const int y_offset, const int n, const float alpha)
{
    const int i = get_global_id(0);
    if (i < n) y[y_offset + i] = alpha * x[x_offset + i];
}

// y = x, between any two ranges that do not overlap
__kernel void copy_f32(__global const float *x, const int x_offset,
                       __global float *y, const int y_offset, const int n)
{
    const int i = get_global_id(0);
    if (i < n) y[y_offset + i] = x[x_offset + i];
}

// y[r, c] = alpha * x[r, c] (+ y[r, c] when accumulate) for R x C matrices whose rows are
// x_ld / y_ld elements apart: gathers the cls rows of a token matrix, scatters them back, and
// moves column slices. One work-item per element, global (C, R).
__kernel void copy_2d(__global const float *x, const int x_offset, const int x_ld,
                      __global float *y, const int y_offset, const int y_ld,
                      const int R, const int C, const float alpha, const int accumulate)
{
    const int c = get_global_id(0), r = get_global_id(1);
    if (c >= C || r >= R) return;
    const float value = alpha * x[x_offset + r * x_ld + c];
    __global float *target = y + y_offset + r * y_ld + c;
    *target = accumulate ? *target + value : value;
}

// Conversions between fp32 and the 16-bit storage types (saved activations; core OpenCL 1.2,
// no cl_khr_fp16). fp16 through vstore_half_rte / vload_half; bf16 as the upper 16 bits of an
// fp32: widening is a shift (exact), narrowing rounds to nearest even and keeps every NaN a
// NaN (a payload in the low bits alone would otherwise round into an Inf or truncate to one).
// Eight values per work-item as vectors (one per element ran at half a copy's rate on PoCL's
// CPU device); the last n % 8 one by one. Global: ceil(n / 8).
#define CONVERT_TAIL(statement) else for (int j = i; j < n; ++j) { statement; }

inline ushort bf16_nearest_even(const uint bits)
{
    return (bits & 0x7fffffffu) > 0x7f800000u
        ? (ushort)((bits >> 16) | 0x0040u)                                  // quiet NaN, sign kept
        : (ushort)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);          // nearest even
}

__kernel void narrow_f32_to_f16(__global const float *x, const int x_offset,
                                __global half *y, const int y_offset, const int n)
{
    const int i = get_global_id(0) * 8;
    if (i + 8 <= n) vstore_half8_rte(vload8(0, x + x_offset + i), 0, y + y_offset + i);
    CONVERT_TAIL(vstore_half_rte(x[x_offset + j], y_offset + j, y))
}

__kernel void widen_f16_to_f32(__global const half *x, const int x_offset,
                               __global float *y, const int y_offset, const int n)
{
    const int i = get_global_id(0) * 8;
    if (i + 8 <= n) vstore8(vload_half8(0, x + x_offset + i), 0, y + y_offset + i);
    CONVERT_TAIL(y[y_offset + j] = vload_half(x_offset + j, x))
}

__kernel void narrow_f32_to_bf16(__global const float *x, const int x_offset,
                                 __global ushort *y, const int y_offset, const int n)
{
    const int i = get_global_id(0) * 8;
    if (i + 8 <= n) {
        const uint8 bits = as_uint8(vload8(0, x + x_offset + i));
        const uint8 nearest = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
        const uint8 quiet = (bits >> 16) | 0x0040u;
        vstore8(convert_ushort8(select(nearest, quiet, (bits & 0x7fffffffu) > (uint8)(0x7f800000u))), 0, y + y_offset + i);
    }
    CONVERT_TAIL(y[y_offset + j] = bf16_nearest_even(as_uint(x[x_offset + j])))
}

__kernel void widen_bf16_to_f32(__global const ushort *x, const int x_offset,
                                __global float *y, const int y_offset, const int n)
{
    const int i = get_global_id(0) * 8;
    if (i + 8 <= n) vstore8(as_float8(convert_uint8(vload8(0, x + x_offset + i)) << 16), 0, y + y_offset + i);
    CONVERT_TAIL(y[y_offset + j] = as_float((uint)x[x_offset + j] << 16))
}
