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
