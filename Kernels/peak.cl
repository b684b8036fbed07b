// Arithmetic peak: chains of multiply-adds that read no memory, so that a training step's
// counted FLOPs can be set against what the device's arithmetic can do at all (a roofline
// that no schedule beats), not only against our own best GEMM.
//
// Every work-item runs CHAINS independent chains of VW lanes, enough of them to cover the
// multiply-add's latency times its issue rate (4 cycles x 2 pipes on x86-64), and stores every
// chain's final value. The host passes a = 1 and b = 1/256, so every value moves by exactly
// 1/256 per iteration and the host knows where each chain must end (Engine.peakFMA): a loop
// that ran another count, was folded away, or a wrong instruction cannot pass for a fast device.
//
// Options: VW (1, 2, 4, 8 or 16 lanes), CHAINS. Output: out[(gid * CHAINS + c) * VW + lane].
// The bf16 dot product's chain, bf16_dot_peak, is in gemm.cl: it runs the GEMM's own
// definition of the instruction, in the GEMM's build.

#ifndef VW
#define VW 16
#endif
#ifndef CHAINS
#define CHAINS 8
#endif

#define CAT(a, b) a##b
#define VEC(type, n) CAT(type, n)

#if VW == 1
#define floatW float
#define STORE_LANES(value, i, p) ((p)[i] = (value))
#else
#define floatW VEC(float, VW)
#define STORE_LANES(value, i, p) VEC(vstore, VW)(value, i, p)
#endif

// x <- fma(x, a, b) per lane; chain c of work-item g starts at (g % 61) / 64 + c / 8 + lane / 256.
__kernel void fma_peak(__global float *out, const int iterations, const float a, const float b)
{
    const int gid = get_global_id(0);
    floatW lanes;
#if VW == 1
    lanes = 0.0f;
#else
    for (int l = 0; l < VW; ++l) ((float *)&lanes)[l] = (float)l / 256.0f;
#endif
    floatW x[CHAINS];
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) x[c] = lanes + (float)(gid % 61) / 64.0f + (float)c / 8.0f;
    for (int i = 0; i < iterations; ++i) {
#pragma unroll
        for (int c = 0; c < CHAINS; ++c) x[c] = fma(x[c], a, b);
    }
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) STORE_LANES(x[c], gid * CHAINS + c, out);
}
