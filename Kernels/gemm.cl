// GEMM: C = act(alpha * sum_t scale_t * op(A_t) op(B_t) + beta * S + bias), row-major,
// optionally batched, for any M, N, K (no padding asked of callers).
//
// Algorithm (GotoBLAS-style, adapted to OpenCL work-items):
//   1. pack_a copies scale * op(A) into row panels of MR rows, k-major:
//        Ap[batch][panel p][k][r] = scale * op(A)[batch][p*MR + r][k]   (0 past M)
//      pack_b copies op(B) into column panels of NR = NV*VW columns, k-major:
//        Bp[batch][panel q][k][c] = op(B)[batch][k][q*NR + c]            (0 past N)
//      Transposes are only strides here, so one micro-kernel serves all four variants.
//      Several (A_t, B_t) pairs pack into consecutive k ranges of the same panels, which makes
//      sum_t op(A_t) op(B_t) ONE reduction of length K_1 + K_2 + ... (the fused serial adapter).
//   2. gemm_packed: one work-item owns an MR x NR register tile (MR x NV vectors of VW floats),
//      streams its two panels over k (one vector load of B, MR broadcasts of A per k and
//      vector), and applies the epilogue: alpha, beta*S (S is C, or an addend with C's layout:
//      a residual stream, so that no copy of it into C is needed), bias (per column), optional copy of
//      the pre-activation, GELU (a rational erf, within 4.4e-7), or a product with GELU' of a given pre-activation;
//      edges are stored scalar.
//
// Tunables (-D): MR rows per work-item, VW vector width, NV vectors per row, UK k-unroll.
// DIRECT_A: when op(A) is a plain row-major matrix, the micro-kernel reads A in place and pack_a
// is skipped (packing A was 9% of a ViT-S training step, and on AVX2 the micro-kernel runs
// about 30% slower over packed A than over A's rows, cause not found). In a sum of terms only
// the first term's A is read in place (k in [0, k_split)); the others, the adapters' narrow
// ones ([u | t], [dqkv | g_q | g_k | g_v]), are packed into A_rest (k_total - k_split long).
// The k-block length KC is a launch parameter, not a define.

#ifndef MR
#define MR 6
#endif
#ifndef VW
#define VW 16
#endif
#ifndef NV
#define NV 2
#endif
#ifndef UK
#define UK 4
#endif
#define NR (NV * VW)

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define PRAGMA(x) _Pragma(#x)
#define PRAGMA_UNROLL(n) PRAGMA(unroll n)
#define floatV CAT(float, VW)
#define vloadV CAT(vload, VW)
#define vstoreV CAT(vstore, VW)

#define EPILOGUE_BIAS 1
#define EPILOGUE_GELU 2
#define EPILOGUE_PRE 4
// Multiplies by GELU'(pre), pre read with C's layout: the fc2 backward's dh = (dy W2) * GELU'(h_pre)
// in the GEMM's store instead of another pass over [T, m].
#define EPILOGUE_GELU_GRAD 8
// With GELU or GELU_GRAD: CLIP's quick GELU x sigmoid(1.702 x) (and its derivative) instead.
#define EPILOGUE_QUICK 16

// The pre-activation (written by PRE, read by GELU_GRAD) is fp32, or with PRE_STORAGE 2 bf16:
// keep-bf16's saved copy, rounded to nearest even as it is stored (a NaN stays a NaN) and
// widened exactly as it is read, so no conversion pass runs over [T, m].
#ifndef PRE_STORAGE
#define PRE_STORAGE 0
#endif
// fp32 -> bf16, round to nearest even; a NaN stays a NaN (the plain formula turns some into
// Inf): quieted, its top bits kept. `bits` are the floats' bits as uint or uintN; the result
// is in the low half of each lane.
#define ROUND_BF16_BITS(bits) select(((bits) + 0x7fffu + (((bits) >> 16) & 1u)) >> 16, ((bits) >> 16) | 0x0040u, \
                                     ((bits) & 0x7fffffffu) > 0x7f800000u)
inline ushort round_bf16(const float x) { return (ushort)ROUND_BF16_BITS(as_uint(x)); }
inline uint16 round_bf16_16(const float16 x) { return ROUND_BF16_BITS(as_uint16(x)); }
#if PRE_STORAGE == 2
#define PRE_ELEMENT ushort
#define as_uintV CAT(as_uint, VW)
#define as_floatV CAT(as_float, VW)
#define convert_uintV CAT(convert_uint, VW)
#define convert_ushortV CAT(convert_ushort, VW)
#define PRE_STORE(x, p, i) ((p)[i] = round_bf16(x))
#define PRE_LOAD(p, i) as_float((uint)(p)[i] << 16)
#define PRE_STORE_V(x, p) vstoreV(convert_ushortV(ROUND_BF16_BITS(as_uintV(x))), 0, (p))
#define PRE_LOAD_V(p) as_floatV(convert_uintV(vloadV(0, (p))) << 16)
#else
#define PRE_ELEMENT float
#define PRE_STORE(x, p, i) ((p)[i] = (x))
#define PRE_LOAD(p, i) (p)[i]
#define PRE_STORE_V(x, p) vstoreV((x), 0, (p))
#define PRE_LOAD_V(p) vloadV(0, (p))
#endif

// Packing: one work-item copies one k-row of one panel (MR values of A, NR values of B).
// Consecutive work-items take consecutive k, so both storage orders read cache-friendly
// (a transposed operand reads MR or NR contiguous floats; a plain one reads MR or NR
// streams that advance by one float per work-item) and the panel is written sequentially.

// Operands stored in 16 or 8 bits (frozen weights) are widened to fp32 here, as they are packed:
// A_STORAGE / B_STORAGE 0 fp32, 1 fp16 (vload_half: core OpenCL, no cl_khr_fp16), 2 bf16 (ushort,
// widened exactly by a shift), 3 int8 (char times the fp32 scale of its stored row: element e of
// the buffer is q[e] * scales[scale_offset + e / row_length], whatever the view's strides).
// The paths that read an operand in place (DIRECT_A, the skinny kernels) widen fp16 and bf16 as
// they read; int8 is only ever dequantized here, in packing (the launcher routes it there), since
// an in-place read would repeat its per-element row-scale lookup once per column panel.
#ifndef A_STORAGE
#define A_STORAGE 0
#endif
#ifndef B_STORAGE
#define B_STORAGE 0
#endif
#if A_STORAGE == 1
#define A_ELEMENT half
#define LOAD_A(p, i) vload_half((i), (p))
#elif A_STORAGE == 2
#define A_ELEMENT ushort
#define LOAD_A(p, i) as_float((uint)(p)[i] << 16)
#elif A_STORAGE == 3
#define A_ELEMENT char
#define LOAD_A(p, i) ((float)(p)[i] * a_scales[a_scale_offset + (int)(((p) + (i)) - A) / a_row_length])
#define A_SCALE_PARAMETERS , __global const float *a_scales, const int a_scale_offset, const int a_row_length
#else
#define A_ELEMENT float
#define LOAD_A(p, i) (p)[i]
#endif
#if B_STORAGE == 1
#define B_ELEMENT half
#define LOAD_B(p, i) vload_half((i), (p))
#elif B_STORAGE == 2
#define B_ELEMENT ushort
#define LOAD_B(p, i) as_float((uint)(p)[i] << 16)
#elif B_STORAGE == 3
#define B_ELEMENT char
#define LOAD_B(p, i) ((float)(p)[i] * b_scales[b_scale_offset + (int)(((p) + (i)) - B) / b_row_length])
#define B_SCALE_PARAMETERS , __global const float *b_scales, const int b_scale_offset, const int b_row_length
#else
#define B_ELEMENT float
#define LOAD_B(p, i) (p)[i]
#endif

#ifndef A_SCALE_PARAMETERS
#define A_SCALE_PARAMETERS
#endif
#ifndef B_SCALE_PARAMETERS
#define B_SCALE_PARAMETERS
#endif

// 16 consecutive values of a stored operand, widened: the skinny kernels' vector reads.
#if A_STORAGE == 1
#define LOAD_A16(v, p) vload_half16((v), (p))
#elif A_STORAGE == 2
#define LOAD_A16(v, p) as_float16(convert_uint16(vload16((v), (p))) << 16)
#else
#define LOAD_A16(v, p) vload16((v), (p))
#endif
#if B_STORAGE == 1
#define LOAD_B16(v, p) vload_half16((v), (p))
#elif B_STORAGE == 2
#define LOAD_B16(v, p) as_float16(convert_uint16(vload16((v), (p))) << 16)
#else
#define LOAD_B16(v, p) vload16((v), (p))
#endif

// Panel element types. fp32 panels hold element (k, i) of a panel `width` wide at k * width + i.
// BF16_PANELS (the CPU's bf16 products, AVX512_BF16): operands are rounded to bf16 (nearest even)
// as they are packed, and consecutive k pair up, [k / 2][i][k % 2], so that one 32-bit lane holds
// the two values vdpbf16ps multiplies and adds; k_total is even (the launcher pads it, zeroed).
#ifdef BF16_PANELS
#define PANEL_ELEMENT ushort
#define PANEL_AT(k, i, width) ((size_t)((k) & ~1) * (width) + 2 * (i) + ((k) & 1))
#define PANEL_VALUE(x) round_bf16(x)
#define PANEL_ZERO ((ushort)0)
#else
#define PANEL_ELEMENT float
#define PANEL_AT(k, i, width) ((size_t)(k) * (width) + (i))
#define PANEL_VALUE(x) (x)
#define PANEL_ZERO 0.0f
#endif

// pack_a: global (K, m_panels, batches). Writes zeros for padding rows.
__kernel void pack_a(__global const A_ELEMENT *A, const int a_offset, const int a_row_stride,
                     const int a_col_stride, const int a_batch_stride, const int M, const int K,
                     const float scale, const int m_panels, const int k_total, const int k_destination,
                     __global PANEL_ELEMENT *Ap A_SCALE_PARAMETERS)
{
    const int k = get_global_id(0);
    const int panel = get_global_id(1);
    const int batch = get_global_id(2);
    if (k >= K) return;
    const __global A_ELEMENT *source = A + a_offset + batch * a_batch_stride + k * a_col_stride;
    __global PANEL_ELEMENT *destination = Ap + (size_t)(batch * m_panels + panel) * k_total * MR;
    const int rows = min(MR, M - panel * MR), at = k_destination + k;
    for (int r = 0; r < MR; ++r)
        destination[PANEL_AT(at, r, MR)] = r < rows ? PANEL_VALUE(scale * LOAD_A(source, (panel * MR + r) * a_row_stride)) : PANEL_ZERO;
}

// pack_b: global (K, n_panels, batches). Writes zeros for padding columns.
__kernel void pack_b(__global const B_ELEMENT *B, const int b_offset, const int b_row_stride,
                     const int b_col_stride, const int b_batch_stride, const int K, const int N,
                     const int n_panels, const int k_total, const int k_destination, __global PANEL_ELEMENT *Bp B_SCALE_PARAMETERS)
{
    const int k = get_global_id(0);
    const int panel = get_global_id(1);
    const int batch = get_global_id(2);
    if (k >= K) return;
    const __global B_ELEMENT *source = B + b_offset + batch * b_batch_stride + k * b_row_stride;
    const int columns = min(NR, N - panel * NR), at = k_destination + k;
#if B_STORAGE < 2 && !defined(BF16_PANELS)
    __global float *destination = Bp + ((size_t)(batch * n_panels + panel) * k_total + at) * NR;
    if (columns == NR && b_col_stride == 1) {
#if B_STORAGE == 1
        for (int v = 0; v < NV; ++v) vstoreV(CAT(vload_half, VW)(v, source + panel * NR), v, destination);
#else
        for (int v = 0; v < NV; ++v) vstoreV(vloadV(v, source + panel * NR), v, destination);
#endif
        return;
    }
#endif
    __global PANEL_ELEMENT *panel_start = Bp + (size_t)(batch * n_panels + panel) * k_total * NR;
    for (int c = 0; c < NR; ++c)
        panel_start[PANEL_AT(at, c, NR)] = c < columns ? PANEL_VALUE(LOAD_B(source, (panel * NR + c) * b_col_stride)) : PANEL_ZERO;
}

#ifdef BF16_PANELS
// bf16 panels a pair of k per work-item, which writes whole 32-bit pairs (the per-k kernels above
// write every other 2-byte value: 0.24 of a copy's rate at best, 15% of a ViT-S step). Used for
// terms that start at an even k (k_destination even); an odd K's last work-item writes its low
// half only, the high half being the next term's first value or the zero pad.
// Global (ceil(K / 2), panels, batches).
__kernel void pack_a_pairs(__global const A_ELEMENT *A, const int a_offset, const int a_row_stride,
                           const int a_col_stride, const int a_batch_stride, const int M, const int K,
                           const float scale, const int m_panels, const int k_total, const int k_destination,
                           __global uint *Ap A_SCALE_PARAMETERS)
{
    const int k = 2 * get_global_id(0), panel = get_global_id(1), batch = get_global_id(2);
    if (k >= K) return;
    const __global A_ELEMENT *source = A + a_offset + batch * a_batch_stride + k * a_col_stride;
    __global uint *destination = Ap + ((size_t)(batch * m_panels + panel) * k_total + k_destination + k) / 2 * MR;
    const int rows = min(MR, M - panel * MR);
    if (k + 1 < K) {
        for (int r = 0; r < MR; ++r) {
            const int at = (panel * MR + r) * a_row_stride;
            destination[r] = r < rows ? (uint)round_bf16(scale * LOAD_A(source, at)) | (uint)round_bf16(scale * LOAD_A(source, at + a_col_stride)) << 16 : 0u;
        }
    } else {
        __global ushort *halves = (__global ushort *)destination;
        for (int r = 0; r < MR; ++r) halves[2 * r] = r < rows ? round_bf16(scale * LOAD_A(source, (panel * MR + r) * a_row_stride)) : (ushort)0;
    }
}

// A plain op(A) (unit column stride: the activations [T, d] of every forward and input-gradient
// product): 16 k of a panel's MR rows per work-item, one vector load per row, written as
// 8 x MR pairs that are contiguous in the panel. Global (ceil(K / 16), m_panels, batches).
#if A_STORAGE < 3
__kernel void pack_a_rows(__global const A_ELEMENT *A, const int a_offset, const int a_row_stride,
                          const int a_batch_stride, const int M, const int K,
                          const float scale, const int m_panels, const int k_total, const int k_destination, __global uint *Ap)
{
    const int k0 = 16 * get_global_id(0), panel = get_global_id(1), batch = get_global_id(2);
    if (k0 >= K) return;
    const int rows = min(MR, M - panel * MR), depth = min(16, K - k0), whole = depth / 2;
    __global uint *destination = Ap + ((size_t)(batch * m_panels + panel) * k_total + k_destination + k0) / 2 * MR;
    for (int r = 0; r < MR; ++r) {
        float16 values = (float16)(0.0f);
        if (r < rows) {
            const __global A_ELEMENT *row = A + a_offset + batch * a_batch_stride + (panel * MR + r) * a_row_stride + k0;
            if (depth == 16) {
                values = scale * LOAD_A16(0, row);
            } else {
                float lanes[16];
                for (int j = 0; j < 16; ++j) lanes[j] = j < depth ? scale * LOAD_A(row, j) : 0.0f;
                values = vload16(0, lanes);
            }
        }
        const uint16 rounded = round_bf16_16(values);
        const uint8 pairs = rounded.even | rounded.odd << 16;
        for (int j = 0; j < whole; ++j) destination[j * MR + r] = pairs[j];
        if (depth & 1) ((__global ushort *)(destination + whole * MR))[2 * r] = (ushort)pairs[whole];
    }
}
#endif

// Rows k and k + 1 of op(B) into NR pairs; a plain B (unit column stride, a full panel) reads
// both rows as vectors. Global (ceil(K / 2), n_panels, batches).
__kernel void pack_b_pairs(__global const B_ELEMENT *B, const int b_offset, const int b_row_stride,
                           const int b_col_stride, const int b_batch_stride, const int K, const int N,
                           const int n_panels, const int k_total, const int k_destination, __global uint *Bp B_SCALE_PARAMETERS)
{
    const int k = 2 * get_global_id(0), panel = get_global_id(1), batch = get_global_id(2);
    if (k >= K) return;
    const __global B_ELEMENT *source = B + b_offset + batch * b_batch_stride + k * b_row_stride;
    __global uint *destination = Bp + ((size_t)(batch * n_panels + panel) * k_total + k_destination + k) / 2 * NR;
    const int columns = min(NR, N - panel * NR);
    if (k + 1 < K) {
#if B_STORAGE < 3
        if (columns == NR && b_col_stride == 1) {
            for (int v = 0; v < NR / 16; ++v) {
                const float16 low = LOAD_B16(v, source + panel * NR), high = LOAD_B16(v, source + panel * NR + b_row_stride);
                vstore16(round_bf16_16(low) | round_bf16_16(high) << 16, v, destination);
            }
            return;
        }
#endif
        for (int c = 0; c < NR; ++c) {
            const int at = (panel * NR + c) * b_col_stride;
            destination[c] = c < columns ? (uint)round_bf16(LOAD_B(source, at)) | (uint)round_bf16(LOAD_B(source, at + b_row_stride)) << 16 : 0u;
        }
    } else {
        __global ushort *halves = (__global ushort *)destination;
        for (int c = 0; c < NR; ++c) halves[2 * c] = c < columns ? round_bf16(LOAD_B(source, (panel * NR + c) * b_col_stride)) : (ushort)0;
    }
}
#endif

// pack_b for a transposed op(B), B[k][c] at B + c * b_col_stride + k (a weight W [N, K] read as
// W^T, as every forward product reads its frozen weight): one work-item packs KT consecutive k
// of one panel with one vector load from each of its NR rows of W, where pack_b reads one value
// from each of NR rows per k (strided scalar loads, at 0.4 of a copy's rate). Written scattered
// into the panel's KT x NR block, which stays in L1. fp32, fp16, bf16 (int8 takes pack_b).
// Global (ceil(K / KT), n_panels, batches).
#define KT 8
#if B_STORAGE == 1
#define LOAD_B8(p) vload_half8(0, (p))
#elif B_STORAGE == 2
#define LOAD_B8(p) as_float8(convert_uint8(vload8(0, (p))) << 16)
#else
#define LOAD_B8(p) vload8(0, (p))
#endif
#if B_STORAGE != 3
__kernel void pack_b_transposed(__global const B_ELEMENT *B, const int b_offset, const int b_col_stride, const int b_batch_stride,
                                const int K, const int N, const int n_panels, const int k_total, const int k_destination,
                                __global PANEL_ELEMENT *Bp, const int bp_offset)
{
    const int k0 = get_global_id(0) * KT, panel = get_global_id(1), batch = get_global_id(2);
    if (k0 >= K) return;
    const int columns = min(NR, N - panel * NR), depth = min(KT, K - k0), at = k_destination + k0;
    __global PANEL_ELEMENT *panel_start = Bp + bp_offset + (size_t)(batch * n_panels + panel) * k_total * NR;
    for (int c = 0; c < NR; ++c) {
        float lanes[KT];
        if (c >= columns) {
            for (int j = 0; j < KT; ++j) lanes[j] = 0.0f;
        } else {
            const __global B_ELEMENT *row = B + b_offset + batch * b_batch_stride + (panel * NR + c) * b_col_stride + k0;
            if (depth == KT) {
                vstore8(LOAD_B8(row), 0, lanes);
            } else {
                for (int j = 0; j < KT; ++j) lanes[j] = j < depth ? LOAD_B(row, j) : 0.0f;
            }
        }
#ifdef BF16_PANELS
        if ((at & 1) == 0) {   // whole pairs (a term at an odd k writes 2-byte halves below)
            __global uint *pairs = (__global uint *)panel_start + (size_t)(at / 2) * NR + c;
            if (depth == KT) {
                const uint8 rounded = ROUND_BF16_BITS(as_uint8(vload8(0, lanes)));
                const uint4 packed = rounded.even | rounded.odd << 16;
                for (int j = 0; j < KT / 2; ++j) pairs[j * NR] = packed[j];
                continue;
            }
            for (int j = 0; j + 1 < depth; j += 2) pairs[j / 2 * NR] = (uint)round_bf16(lanes[j]) | (uint)round_bf16(lanes[j + 1]) << 16;
            if (depth & 1) panel_start[PANEL_AT(at + depth - 1, c, NR)] = round_bf16(lanes[depth - 1]);
            continue;
        }
#endif
        for (int j = 0; j < depth; ++j) panel_start[PANEL_AT(at + j, c, NR)] = PANEL_VALUE(lanes[j]);
    }
}
#endif

// The GPU packing (gemm_tiled's panels): where pack_a and pack_b give a work-item a whole panel
// row, so that a warp's 32 stores land 4 * MR bytes apart (32 memory transactions per store;
// 22% of the first H200 ViT-B step at 0.15-0.22 of copy bandwidth), a work-group here moves one
// 32 x 32 block of (panel index i, k) through __local memory: it reads along whichever of i and
// k has unit stride in the source and writes along i, the panel's contiguous side, so both
// sides are coalesced. One kernel per operand serves every transpose:
//   A: i = row of op(A),    stride_i = a_row_stride, stride_k = a_col_stride, times scale
//   B: i = column of op(B), stride_i = b_col_stride, stride_k = b_row_stride (scale 1)
//   packed[batch][i / width][k_destination + k][i % width] = scale * source(i, k), 0 past extent_i.
// The last batch reduces over k_final <= K (split-k: the batches are chunks of one reduction,
// batch_stride = K * stride_k, and the last chunk is shorter); its panels are zero past it.
// Global (roundUp(panels * width, 32), 8 * ceil(K / 32), batches), local (32, 8, 1).
#define PACK_TILE 32
#define PACK_ROWS 8
#define PACK_PANELS(NAME, ELEMENT, LOAD, SOURCE, SCALE_PARAMETERS) \
__kernel __attribute__((reqd_work_group_size(PACK_TILE, PACK_ROWS, 1))) \
void NAME(__global const ELEMENT *SOURCE, const int offset, const int stride_i, const int stride_k, const int batch_stride, \
          const int extent_i, const int K, const int k_final, const float scale, const int width, const int panels, \
          const int k_total, const int k_destination, __global float *packed SCALE_PARAMETERS) \
{ \
    __local float block[PACK_TILE][PACK_TILE + 1];   /* [i][k]; the pad keeps columns off one bank */ \
    const int lx = get_local_id(0), ly = get_local_id(1); \
    const int i0 = get_group_id(0) * PACK_TILE, k0 = get_group_id(1) * PACK_TILE, batch = get_global_id(2); \
    const __global ELEMENT *base = SOURCE + offset + batch * batch_stride; \
    const int k_unit = stride_k == 1; \
    const int k_valid = batch == (int)get_global_size(2) - 1 ? k_final : K; \
    for (int j = ly; j < PACK_TILE; j += PACK_ROWS) { \
        const int di = k_unit ? j : lx, dk = k_unit ? lx : j; \
        const int i = i0 + di, k = k0 + dk; \
        block[di][dk] = i < extent_i && k < k_valid ? scale * LOAD(base, i * stride_i + k * stride_k) : 0.0f; \
    } \
    barrier(CLK_LOCAL_MEM_FENCE); \
    const int i = i0 + lx; \
    if (i >= panels * width) return; \
    __global float *destination = packed + ((size_t)(batch * panels + i / width) * k_total + k_destination) * width + i % width; \
    for (int j = ly; j < PACK_TILE && k0 + j < K; j += PACK_ROWS) destination[(size_t)(k0 + j) * width] = block[lx][j]; \
}
PACK_PANELS(pack_panels_a, A_ELEMENT, LOAD_A, A, A_SCALE_PARAMETERS)
PACK_PANELS(pack_panels_b, B_ELEMENT, LOAD_B, B, B_SCALE_PARAMETERS)

// erf(x) as an odd rational function, x P(x^2) / Q(x^2) with P of degree 6 and Q of degree 4,
// the input clamped to [-4, 4] (beyond it erf is +-1 in fp32): 12 multiply-adds and a division,
// where the library erf (SLEEF in PoCL) made the GELU epilogues the slowest GEMMs of a step.
// Max absolute error 4.4e-7 against double erf (2e6 points in [-6, 6]); relative 2.4e-7 near 0.
// (Kernels/activation.cl, the standalone GELU, keeps the library erf.)
#define ERF_P(c, c2) (((((((-2.72614225801306e-10f * (c2) + 2.77068142495902e-08f) * (c2) - 2.10102402082508e-06f) * (c2) \
    - 5.69250639462346e-05f) * (c2) - 7.34990630326855e-04f) * (c2) - 2.95459980854025e-03f) * (c2) - 1.60960333262415e-02f) * (c))
#define ERF_Q(c2) ((((-1.45660718464996e-05f * (c2) - 2.13374055278905e-04f) * (c2) - 1.68282697438203e-03f) * (c2) \
    - 7.37332916720468e-03f) * (c2) - 1.42647390514189e-02f)
inline float erf_scalar(const float x)
{
    const float c = clamp(x, -4.0f, 4.0f), c2 = c * c;
    return clamp(ERF_P(c, c2) / ERF_Q(c2), -1.0f, 1.0f);   // a division worse than correctly rounded must not pass 1
}
inline floatV erf_vector(const floatV x)
{
    const floatV c = clamp(x, -4.0f, 4.0f), c2 = c * c;
    return clamp(ERF_P(c, c2) / ERF_Q(c2), -1.0f, 1.0f);
}
inline float gelu_scalar(const float x) { return 0.5f * x * (1.0f + erf_scalar(x * 0.70710678118654752f)); }
inline floatV gelu_vector(const floatV x) { return 0.5f * x * (1.0f + erf_vector(x * 0.70710678118654752f)); }
inline float gelu_grad_scalar(const float x)
{
    return 0.5f * (1.0f + erf_scalar(x * 0.70710678118654752f)) + x * (0.39894228040143268f * exp(-0.5f * x * x));
}
inline floatV gelu_grad_vector(const floatV x)
{
    return 0.5f * (1.0f + erf_vector(x * 0.70710678118654752f)) + x * (0.39894228040143268f * exp(-0.5f * x * x));
}

// quick_gelu(x) = x s, s = sigmoid(1.702 x); quick_gelu'(x) = s + 1.702 x s (1 - s). For very
// negative x, exp overflows to inf and s to 0: both stay finite (0 and -0).
inline float quick_gelu_scalar(const float x) { return x / (1.0f + exp(-1.702f * x)); }
inline floatV quick_gelu_vector(const floatV x) { return x / (1.0f + exp(-1.702f * x)); }
inline float quick_gelu_grad_scalar(const float x)
{
    const float s = 1.0f / (1.0f + exp(-1.702f * x));
    return s + 1.702f * x * s * (1.0f - s);
}
inline floatV quick_gelu_grad_vector(const floatV x)
{
    const floatV s = 1.0f / (1.0f + exp(-1.702f * x));
    return s + 1.702f * x * s * (1.0f - s);
}

// The epilogue of one element: x = alpha * (op(A) op(B))[row][column] in, C[c_at] (and
// pre[pre_at]) out; the scalar form of what gemm_packed does per vector, shared by its edge
// columns and by gemm_tiled.
inline void store_epilogue(float x, const float beta, __global const float *S, const int s_at, const int flags,
                           __global float *C, const int c_at,
                           __global const float *bias, const int bias_at, __global PRE_ELEMENT *pre, const int pre_at)
{
    if (beta != 0.0f) x += beta * S[s_at];
    if (flags & EPILOGUE_BIAS) x += bias[bias_at];
    if (flags & EPILOGUE_PRE) PRE_STORE(x, pre, pre_at);
    if (flags & EPILOGUE_GELU) x = (flags & EPILOGUE_QUICK) ? quick_gelu_scalar(x) : gelu_scalar(x);
    if (flags & EPILOGUE_GELU_GRAD) {
        const float p = PRE_LOAD(pre, pre_at);
        x *= (flags & EPILOGUE_QUICK) ? quick_gelu_grad_scalar(p) : gelu_grad_scalar(p);
    }
    C[c_at] = x;
}

// Split-k's second pass: C = epilogue(alpha * sum_s partial[s]), partial [chunks][M][N] from
// gemm_tiled with alpha 1, beta 0. Global (N, M).
__kernel void gemm_split_sum(__global const float *partial, const int chunks, const int M, const int N,
                             __global float *C, const int c_offset, const int ldc,
                             const float alpha, const float beta,
                             __global const float *bias, const int bias_offset, const int flags,
                             __global PRE_ELEMENT *pre, const int pre_offset,
                             __global const float *S, const int s_offset)
{
    const int column = get_global_id(0), row = get_global_id(1);
    if (column >= N || row >= M) return;
    float x = 0.0f;
    for (int s = 0; s < chunks; ++s) x += partial[((size_t)s * M + row) * N + column];
    const int at = row * ldc + column;
    store_epilogue(alpha * x, beta, S, s_offset + at, flags, C, c_offset + at, bias, bias_offset + column, pre, pre_offset + at);
}

#ifndef TILED
// The CPU kernels (register tiles over packed panels, the skinny products). A TILED build holds
// the packing kernels and gemm_tiled only, so the GPU program compiles none of these.

// gemm_packed: global (n_panels, m_panels, batches), padded up to the local size.
// Reduces over packed k in [k_begin, k_end): the launcher splits long reductions into blocks
// (KC) whose panels stay in cache, accumulating into C with beta = 1 after the first block.
// a_batched / b_batched: 0 when one packed operand serves every batch (shared weights).
#ifdef DIRECT_A
#if A_STORAGE == 3
#error "int8 operands are dequantized in pack_a, never read in place"
#endif
#define AP_ELEMENT A_ELEMENT
#else
#define AP_ELEMENT float
#endif

#ifdef BF16_PANELS
#if VW != 16 || defined(DIRECT_A)
#error "bf16 panels take 16-float vectors and a packed A"
#endif
#undef AP_ELEMENT
#define AP_ELEMENT uint
#define BP_ELEMENT uint
// The register tile over bf16 panels: per pair of k, NV vectors of 16 column pairs of B and a
// broadcast row pair of A per row, one vdpbf16ps each (two multiply-adds per lane, summed in fp32:
// twice an fp32 FMA's work per instruction). vdpbf16ps is AVX512_BF16, which PoCL's target CPU
// (skylake-avx512) lacks, so it is written as inline assembly: the builtin needs the target
// feature, and a kernel that carries it is inlined by PoCL into a work-group function that does
// not, where LLVM aborts the process; the builtin's operand types also differ between LLVM 15
// and 16+, and LLVM 16 crashes optimizing it. The assembler knows the instruction whatever the
// target. The launcher uses this path only where the CPU reports avx512_bf16 and a probe product
// through it matched the host (Engine.setMatmulPrecision).
// BF16_EMULATE (tests on CPUs without the instruction, so that the pair layout and the packing
// are tested everywhere): the same arithmetic in fp32, each bf16 widened exactly by a shift, the
// odd element's product added first as vdpbf16ps does (the products are exact in fp32, so each
// fma rounds as the instruction's addition does; only its denormal flushing differs).
#ifdef BF16_EMULATE
#define DOT_BF16(acc, a, b) ((acc) = fma(as_float16(as_uint16(a) << 16), as_float16(as_uint16(b) << 16), \
                                         fma(as_float16(as_uint16(a) & 0xffff0000u), as_float16(as_uint16(b) & 0xffff0000u), (acc))))
#else
#define DOT_BF16(acc, a, b) __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))
#endif
static void accumulate_bf16(const __global uint *a, const __global uint *b, const int pair_begin, const int pair_end, float16 *tile)
{
    float16 acc[MR][NV];
#pragma unroll
    for (int r = 0; r < MR; ++r)
#pragma unroll
        for (int v = 0; v < NV; ++v) acc[r][v] = (float16)(0.0f);
    PRAGMA_UNROLL(UK)
    for (int k = pair_begin; k < pair_end; ++k) {
        int16 bv[NV];
#pragma unroll
        for (int v = 0; v < NV; ++v) bv[v] = as_int16(vload16(v, b + k * NR));
#pragma unroll
        for (int r = 0; r < MR; ++r) {
            const int16 av = (int16)((int)a[k * MR + r]);
#pragma unroll
            for (int v = 0; v < NV; ++v) DOT_BF16(acc[r][v], av, bv[v]);
        }
    }
#pragma unroll
    for (int r = 0; r < MR; ++r)
#pragma unroll
        for (int v = 0; v < NV; ++v) tile[r * NV + v] = acc[r][v];
}

// The arithmetic peak of DOT_BF16 (Kernels/peak.cl explains the chains): per work-item
// PEAK_CHAINS chains of 16 lanes, acc <- acc + a.hi * b.hi + a.lo * b.lo with a and b each one
// bf16 pair broadcast; out[(gid * PEAK_CHAINS + c) * 16 + lane].
#define PEAK_CHAINS 8
__kernel void bf16_dot_peak(__global float *out, const int iterations, const uint pair_a, const uint pair_b)
{
    const int gid = get_global_id(0);
    const int16 a = (int16)((int)pair_a), b = (int16)((int)pair_b);
    const float16 lanes = (float16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) / 256.0f;
    float16 acc[PEAK_CHAINS];
#pragma unroll
    for (int c = 0; c < PEAK_CHAINS; ++c) acc[c] = lanes + (float)(gid % 61) / 64.0f + (float)c / 8.0f;
    for (int i = 0; i < iterations; ++i) {
#pragma unroll
        for (int c = 0; c < PEAK_CHAINS; ++c) DOT_BF16(acc[c], a, b);
    }
#pragma unroll
    for (int c = 0; c < PEAK_CHAINS; ++c) vstore16(acc[c], gid * PEAK_CHAINS + c, out);
}
#else
#define BP_ELEMENT float
#endif

__kernel void gemm_packed(__global const AP_ELEMENT *Ap, __global const BP_ELEMENT *Bp, const int k_total,
                          const int k_begin, const int k_end,
                          const int a_offset, const int lda, const int a_batch_stride,
                          const int M, const int N, const int m_panels, const int n_panels,
                          const int a_batched, const int b_batched,
                          __global float *C, const int c_offset, const int ldc, const int c_batch_stride,
                          const float alpha, const float beta,
                          __global const float *bias, const int bias_offset, const int flags,
                          __global PRE_ELEMENT *pre, const int pre_offset,
                          __global const float *A_rest, const int k_split,
                          __global const float *S, const int s_offset)
{
    const int q = get_global_id(0);
    const int p = get_global_id(1);
    const int batch = get_global_id(2);
    if (q >= n_panels || p >= m_panels) return;

#ifdef BF16_PANELS
    // k_total is even: a panel holds k_total / 2 pairs per row (column) of the tile.
    floatV acc[MR][NV];
    accumulate_bf16(Ap + (size_t)((a_batched ? batch : 0) * m_panels + p) * (k_total / 2) * MR,
                    Bp + (size_t)((b_batched ? batch : 0) * n_panels + q) * (k_total / 2) * NR, k_begin / 2, k_end / 2, &acc[0][0]);
#else
#ifdef DIRECT_A
    // A read in place (a plain row-major op(A) with row stride lda): MR row streams; rows past
    // M re-read row M-1 and are never stored.
    const __global A_ELEMENT *a_rows[MR];
#pragma unroll
    for (int r = 0; r < MR; ++r) a_rows[r] = Ap + a_offset + batch * a_batch_stride + min(p * MR + r, M - 1) * lda;
#define A_VALUE(r, k) LOAD_A(a_rows[r], k)
    const __global float *a_rest = A_rest + (size_t)((a_batched ? batch : 0) * m_panels + p) * (k_total - k_split) * MR;
#define A_REST_VALUE(r, k) a_rest[((k) - k_split) * MR + (r)]
#else
    const __global float *a = Ap + (size_t)((a_batched ? batch : 0) * m_panels + p) * k_total * MR;
#define A_VALUE(r, k) a[(k) * MR + (r)]
#endif
    const __global float *b = Bp + (size_t)((b_batched ? batch : 0) * n_panels + q) * k_total * NR;

    floatV acc[MR][NV];
#pragma unroll
    for (int r = 0; r < MR; ++r)
#pragma unroll
        for (int v = 0; v < NV; ++v) acc[r][v] = (floatV)(0.0f);

#define ACCUMULATE(k_from, k_to, VALUE)                                          \
    PRAGMA_UNROLL(UK)                                                           \
    for (int k = (k_from); k < (k_to); ++k) {                                   \
        floatV bv[NV];                                                          \
        _Pragma("unroll")                                                       \
        for (int v = 0; v < NV; ++v) bv[v] = vloadV(v, b + k * NR);             \
        _Pragma("unroll")                                                       \
        for (int r = 0; r < MR; ++r) {                                          \
            const floatV av = (floatV)(VALUE(r, k));                            \
            _Pragma("unroll")                                                   \
            for (int v = 0; v < NV; ++v) acc[r][v] = fma(av, bv[v], acc[r][v]); \
        }                                                                       \
    }
#ifdef DIRECT_A
    ACCUMULATE(k_begin, min(k_end, k_split), A_VALUE)
    ACCUMULATE(max(k_begin, k_split), k_end, A_REST_VALUE)
#else
    ACCUMULATE(k_begin, k_end, A_VALUE)
#endif
#endif // BF16_PANELS

    const int c_base = c_offset + batch * c_batch_stride;
    const int pre_base = pre_offset + batch * c_batch_stride;
    const int s_base = s_offset + batch * c_batch_stride;
#pragma unroll
    for (int r = 0; r < MR; ++r) {
        const int row = p * MR + r;
        if (row >= M) break;
#pragma unroll
        for (int v = 0; v < NV; ++v) {
            const int column = q * NR + v * VW;
            if (column >= N) break;
            floatV value = alpha * acc[r][v];
            __global float *c_row = C + c_base + row * ldc + column;
            if (column + VW <= N) {
                if (beta != 0.0f) value += beta * vloadV(0, S + s_base + row * ldc + column);
                if (flags & EPILOGUE_BIAS) value += vloadV(0, bias + bias_offset + column);
                if (flags & EPILOGUE_PRE) PRE_STORE_V(value, pre + pre_base + row * ldc + column);
                if (flags & EPILOGUE_GELU) value = (flags & EPILOGUE_QUICK) ? quick_gelu_vector(value) : gelu_vector(value);
                if (flags & EPILOGUE_GELU_GRAD) {
                    const floatV p = PRE_LOAD_V(pre + pre_base + row * ldc + column);
                    value *= (flags & EPILOGUE_QUICK) ? quick_gelu_grad_vector(p) : gelu_grad_vector(p);
                }
                vstoreV(value, 0, c_row);
            } else {
                float lane[VW];
                vstoreV(value, 0, lane);
                for (int j = 0; j < N - column; ++j)
                    store_epilogue(lane[j], beta, S, s_base + row * ldc + column + j, flags, C, c_base + row * ldc + column + j,
                                   bias, bias_offset + column + j,
                                   pre, pre_base + row * ldc + column + j);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Skinny products: C = alpha op(A) op(B) + beta C with at most 16 columns (NS, a define), the
// adapters' low-rank GEMMs (u A^T, W B, G C, G^T t, W^T P, and u^T g for dA^T). The panel
// kernel above spends a 32-column tile on them (a quarter used at r = 8) and packs op(A) when
// it is transposed (all of G for G^T t); these read both operands in place (fp32, fp16 or bf16:
// A_STORAGE and B_STORAGE 0 to 2, widened as read).
// C[i][j] is at c + i * c_rs + j * c_cs (so a transposed C serves C^T = op(B)^T op(A)^T).
#ifndef NS
#define NS 16
#endif
#ifndef RS
#define RS 8
#endif
#ifndef LV
#define LV 2
#endif

// Rows variant, for an op(A) with contiguous rows (A[i][k] at a + i * a_rs + k): RS rows per
// work-item, one vector of SW columns per row (8 lanes when NS <= 8: the rank-8 adapters would
// leave half of 16 lanes zero, and 8 accumulators of 16 are all of AVX2's registers). Bp holds
// op(B) as K rows of SW (zero past NS), written by pack_small_b. Global (ceil(M / RS)).
#ifndef SW
#define SW 16
#endif
#define floatS CAT(float, SW)
#define vloadS CAT(vload, SW)
#define vstoreS CAT(vstore, SW)
#if A_STORAGE == 3 || B_STORAGE == 3
// (An int8 build only packs for the panel kernel: the skinny kernels are not compiled in it.)
#else
__kernel void pack_small_b(__global const B_ELEMENT *B, const int b_offset, const int b_rs, const int b_cs,
                           const int K, __global float *Bp, const int bp_offset)
{
    const int k = get_global_id(0);
    if (k >= K) return;
    for (int j = 0; j < SW; ++j) Bp[bp_offset + k * SW + j] = j < NS ? LOAD_B(B, b_offset + k * b_rs + j * b_cs) : 0.0f;
}

__kernel void gemm_small_rows(__global const A_ELEMENT *A, const int a_offset, const int a_rs,
                              __global const float *Bp, const int bp_offset, const int M, const int K,
                              __global float *C, const int c_offset, const int c_rs, const int c_cs,
                              const float alpha, const float beta)
{
    const int i0 = get_global_id(0) * RS;
    if (i0 >= M) return;
    const __global A_ELEMENT *rows[RS];
    floatS acc[RS];
#pragma unroll
    for (int r = 0; r < RS; ++r) {
        rows[r] = A + a_offset + min(i0 + r, M - 1) * a_rs;
        acc[r] = (floatS)(0.0f);
    }
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
        const floatS b = vloadS(k, Bp + bp_offset);
#pragma unroll
        for (int r = 0; r < RS; ++r) acc[r] = fma((floatS)(LOAD_A(rows[r], k)), b, acc[r]);
    }
    float lanes[SW];
#pragma unroll
    for (int r = 0; r < RS; ++r) {
        if (i0 + r >= M) break;
        vstoreS(acc[r], 0, lanes);
        for (int j = 0; j < NS; ++j) {
            __global float *c = C + c_offset + (i0 + r) * c_rs + j * c_cs;
            *c = beta != 0.0f ? alpha * lanes[j] + beta * *c : alpha * lanes[j];
        }
    }
}

// Lanes variant, for an op(A) with contiguous columns (A[i][k] at a + k * a_cs + i, i.e. a
// transposed operand): 16 * LV rows per work-item in the lanes of LV vectors, LV * NS
// accumulators, op(B) read as broadcasts (B[k][j] at b + k * b_rs + j * b_cs).
// Global (ceil(M / (16 * LV))).
__kernel void gemm_small_lanes(__global const A_ELEMENT *A, const int a_offset, const int a_cs,
                               __global const B_ELEMENT *B, const int b_offset, const int b_rs, const int b_cs,
                               const int M, const int K,
                               __global float *C, const int c_offset, const int c_rs, const int c_cs,
                               const float alpha, const float beta)
{
    const int i0 = get_global_id(0) * 16 * LV;
    if (i0 >= M) return;
    float16 acc[LV][NS];
#pragma unroll
    for (int v = 0; v < LV; ++v)
#pragma unroll
        for (int j = 0; j < NS; ++j) acc[v][j] = (float16)(0.0f);
    const __global A_ELEMENT *a = A + a_offset + i0;
    const __global B_ELEMENT *b = B + b_offset;
    if (i0 + 16 * LV <= M) {
        for (int k = 0; k < K; ++k) {
            float16 column[LV];
#pragma unroll
            for (int v = 0; v < LV; ++v) column[v] = LOAD_A16(v, a + k * a_cs);
#pragma unroll
            for (int j = 0; j < NS; ++j) {
                const float16 weight = (float16)(LOAD_B(b, k * b_rs + j * b_cs));
#pragma unroll
                for (int v = 0; v < LV; ++v) acc[v][j] = fma(column[v], weight, acc[v][j]);
            }
        }
    } else {
        // The last rows: lanes past M re-read row M - 1 and are never stored.
        for (int k = 0; k < K; ++k) {
            float16 column[LV];
#pragma unroll
            for (int v = 0; v < LV; ++v) {
                float padded[16];
                for (int l = 0; l < 16; ++l) padded[l] = LOAD_A(a, k * a_cs + min(16 * v + l, M - 1 - i0));
                column[v] = vload16(0, padded);
            }
#pragma unroll
            for (int j = 0; j < NS; ++j) {
                const float16 weight = (float16)(LOAD_B(b, k * b_rs + j * b_cs));
#pragma unroll
                for (int v = 0; v < LV; ++v) acc[v][j] = fma(column[v], weight, acc[v][j]);
            }
        }
    }
    float lanes[16];
#pragma unroll
    for (int v = 0; v < LV; ++v)
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            vstore16(acc[v][j], 0, lanes);
            for (int l = 0; l < 16 && i0 + 16 * v + l < M; ++l) {
                __global float *c = C + c_offset + (i0 + 16 * v + l) * c_rs + j * c_cs;
                *c = beta != 0.0f ? alpha * lanes[l] + beta * *c : alpha * lanes[l];
            }
        }
}
#endif // int8
#endif // !TILED

#ifdef TILED
// ---------------------------------------------------------------------------------------
// gemm_tiled: the GPU kernel (CLBlast's xgemm design over sloragpu's packed panels).
//
// A work-group of NDIMC x MDIMC work-items computes an MWG x NWG tile of C. The operands are
// packed exactly as for the CPU kernel, with panel heights MR = MWG and NR = NWG: so every
// transpose, stride, batch and multi-term sum is already resolved, padding rows and columns are
// zero, and a KWG-long chunk of a panel is one contiguous run of KWG * MWG (KWG * NWG) floats.
// Per chunk the work-group copies both runs into __local with coalesced VWM-wide loads (zeros
// past k_total, so the inner loop always runs KWG steps), synchronises, and each work-item
// accumulates its MWI x NWI outputs, rows ty + i MDIMC and columns tx + j NDIMC: a warp reads
// one A value per row (a broadcast) and consecutive B values (no bank conflicts), and stores
// consecutive columns of C (coalesced). The epilogue is store_epilogue, element by element.
//
// Tunables (-D): MWG, NWG, KWG, MDIMC, NDIMC, VWM (1, 2 or 4). __local use: 4 KWG (MWG + NWG)
// bytes, checked by the launcher against the device's limit (48 KiB on NVIDIA).
#ifndef MWG
#define MWG 64
#endif
#ifndef NWG
#define NWG 64
#endif
#ifndef KWG
#define KWG 16
#endif
#ifndef MDIMC
#define MDIMC 16
#endif
#ifndef NDIMC
#define NDIMC 16
#endif
#ifndef VWM
#define VWM 4
#endif
#define MWI (MWG / MDIMC)
#define NWI (NWG / NDIMC)
#define WGS (MDIMC * NDIMC)

#if VWM == 1
#define COPY_CHUNK(dst, src, i, limit) dst[i] = (i) < (limit) ? src[i] : 0.0f
#else
#define floatM CAT(float, VWM)
#define vloadM CAT(vload, VWM)
#define vstoreM CAT(vstore, VWM)
// Chunk lengths are multiples of VWM (MWG, NWG are), so a vector is wholly inside or outside.
#define COPY_CHUNK(dst, src, i, limit) vstoreM((i) < (limit) ? vloadM(0, src + (i)) : (floatM)(0.0f), 0, dst + (i))
#endif

// Global (n_panels NDIMC, m_panels MDIMC, batches), local (NDIMC, MDIMC, 1).
__kernel __attribute__((reqd_work_group_size(NDIMC, MDIMC, 1)))
void gemm_tiled(__global const float *Ap, __global const float *Bp, const int k_total,
                const int M, const int N, const int m_panels, const int n_panels,
                const int a_batched, const int b_batched,
                __global float *C, const int c_offset, const int ldc, const int c_batch_stride,
                const float alpha, const float beta,
                __global const float *bias, const int bias_offset, const int flags,
                __global PRE_ELEMENT *pre, const int pre_offset,
                __global const float *S, const int s_offset)
{
    __local float As[KWG * MWG];
    __local float Bs[KWG * NWG];
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int q = get_group_id(0), p = get_group_id(1), batch = get_global_id(2);
    const int lid = ty * NDIMC + tx;
    const __global float *a = Ap + (size_t)((a_batched ? batch : 0) * m_panels + p) * k_total * MWG;
    const __global float *b = Bp + (size_t)((b_batched ? batch : 0) * n_panels + q) * k_total * NWG;

    float acc[MWI][NWI];
#pragma unroll
    for (int i = 0; i < MWI; ++i)
#pragma unroll
        for (int j = 0; j < NWI; ++j) acc[i][j] = 0.0f;

    for (int k0 = 0; k0 < k_total; k0 += KWG) {
        const int rows = min(KWG, k_total - k0);
        const __global float *a_chunk = a + k0 * MWG;
        const __global float *b_chunk = b + k0 * NWG;
        for (int i = lid * VWM; i < KWG * MWG; i += WGS * VWM) COPY_CHUNK(As, a_chunk, i, rows * MWG);
        for (int i = lid * VWM; i < KWG * NWG; i += WGS * VWM) COPY_CHUNK(Bs, b_chunk, i, rows * NWG);
        barrier(CLK_LOCAL_MEM_FENCE);
#pragma unroll
        for (int kk = 0; kk < KWG; ++kk) {
            float av[MWI], bv[NWI];
#pragma unroll
            for (int i = 0; i < MWI; ++i) av[i] = As[kk * MWG + ty + i * MDIMC];
#pragma unroll
            for (int j = 0; j < NWI; ++j) bv[j] = Bs[kk * NWG + tx + j * NDIMC];
#pragma unroll
            for (int i = 0; i < MWI; ++i)
#pragma unroll
                for (int j = 0; j < NWI; ++j) acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    const int c_base = c_offset + batch * c_batch_stride;
    const int pre_base = pre_offset + batch * c_batch_stride;
    const int s_base = s_offset + batch * c_batch_stride;
#pragma unroll
    for (int i = 0; i < MWI; ++i) {
        const int row = p * MWG + ty + i * MDIMC;
        if (row >= M) break;
#pragma unroll
        for (int j = 0; j < NWI; ++j) {
            const int column = q * NWG + tx + j * NDIMC;
            if (column >= N) break;
            const int at = row * ldc + column;
            store_epilogue(alpha * acc[i][j], beta, S, s_base + at, flags, C, c_base + at, bias, bias_offset + column, pre, pre_base + at);
        }
    }
}
#endif // TILED
