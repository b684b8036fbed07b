// Softmax cross-entropy over a batch, forward and backward fused.
// logits, dlogits [B, C]; labels [B] int; losses [B].
// With label smoothing eps the target is q = (1 - eps) onehot(label) + eps / C, and
//   loss_b = logsumexp(z_b) - sum_c q_c z_bc,   dlogits_b = (softmax(z_b) - q) * grad_scale
// (grad_scale = 1 / B for the mean). One work-item per row, max-subtracted.

__kernel void softmax_cross_entropy(__global const float *logits, const int logits_offset,
                                    __global const int *labels, const int labels_offset,
                                    __global float *losses, const int losses_offset,
                                    __global float *dlogits, const int dlogits_offset,
                                    const int B, const int C, const float smoothing,
                                    const float grad_scale, const int want_gradient)
{
    const int b = get_global_id(0);
    if (b >= B) return;
    const __global float *z = logits + logits_offset + b * C;
    const int label = labels[labels_offset + b];
    float maximum = z[0];
    for (int c = 1; c < C; ++c) maximum = fmax(maximum, z[c]);
    float sum = 0.0f, z_sum = 0.0f;
    for (int c = 0; c < C; ++c) {
        sum += exp(z[c] - maximum);
        z_sum += z[c];
    }
    const float lse = maximum + log(sum);
    const float off_target = smoothing / C;
    const float on_target = 1.0f - smoothing + off_target;
    losses[losses_offset + b] = lse - (on_target - off_target) * z[label] - off_target * z_sum;
    if (!want_gradient) return;
    __global float *dz = dlogits + dlogits_offset + b * C;
    for (int c = 0; c < C; ++c) {
        const float q = c == label ? on_target : off_target;
        dz[c] = (exp(z[c] - lse) - q) * grad_scale;
    }
}

// GPUs: softmax_cross_entropy_group, global (LG, B), local (LG, 1): one work-group per row.
// Work-items stride the row (coalesced), and three __local trees give the row's maximum, its
// sum of exp(z - max) and its sum of z; every work-item then writes its share of the gradient.
// Large class counts (ImageNet-21k's 21843) would otherwise leave one thread per row.
#ifndef LG
#define LG 128
#endif
__kernel __attribute__((reqd_work_group_size(LG, 1, 1)))
void softmax_cross_entropy_group(__global const float *logits, const int logits_offset,
                                 __global const int *labels, const int labels_offset,
                                 __global float *losses, const int losses_offset,
                                 __global float *dlogits, const int dlogits_offset,
                                 const int B, const int C, const float smoothing,
                                 const float grad_scale, const int want_gradient)
{
    __local float scratch[LG], second[LG];
    const int t = get_local_id(0), b = get_group_id(1);
    const __global float *z = logits + logits_offset + b * C;
    float maximum = -INFINITY;
    for (int c = t; c < C; c += LG) maximum = fmax(maximum, z[c]);
    scratch[t] = maximum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = LG / 2; step > 0; step >>= 1) {
        if (t < step) scratch[t] = fmax(scratch[t], scratch[t + step]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    maximum = scratch[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float sum = 0.0f, z_sum = 0.0f;
    for (int c = t; c < C; c += LG) {
        sum += exp(z[c] - maximum);
        z_sum += z[c];
    }
    scratch[t] = sum;
    second[t] = z_sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int step = LG / 2; step > 0; step >>= 1) {
        if (t < step) {
            scratch[t] += scratch[t + step];
            second[t] += second[t + step];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float lse = maximum + log(scratch[0]);
    const int label = labels[labels_offset + b];
    const float off_target = smoothing / C;
    const float on_target = 1.0f - smoothing + off_target;
    if (t == 0) losses[losses_offset + b] = lse - (on_target - off_target) * z[label] - off_target * second[0];
    if (!want_gradient) return;
    __global float *dz = dlogits + dlogits_offset + b * C;
    for (int c = t; c < C; c += LG) {
        const float q = c == label ? on_target : off_target;
        dz[c] = (exp(z[c] - lse) - q) * grad_scale;
    }
}
