// Patch embedding and token assembly, forward and backward.
// images [B, Ch, H, W] (NCHW); patches [B * Np, Ch * P * P] with columns ordered (ch, ky, kx),
// which matches a Conv2d weight [D, Ch, P, P] flattened to [D, Ch * P * P];
// Np = (H / P) * (W / P) patches in row-major grid order.
// tokens x [B, 1 + Np, D]: token 0 is cls + pos[0], token 1 + p is patch_out[b, p] + pos[1 + p].

// One work-item per (patch, channel, kernel row): P contiguous pixels, so the index
// arithmetic (integer division, which CPUs cannot vectorise) is paid once per P values.
// Global (B * Np * Ch * P).
__kernel void im2col_patches(__global const float *images, const int images_offset,
                             __global float *patches, const int patches_offset,
                             const int B, const int Ch, const int H, const int W, const int P)
{
    const int grid_w = W / P, patches_per_image = (H / P) * grid_w;
    const int i = get_global_id(0);
    if (i >= B * patches_per_image * Ch * P) return;
    const int ky = i % P, rest = i / P;
    const int ch = rest % Ch, row = rest / Ch;
    const int b = row / patches_per_image, p = row % patches_per_image;
    const int y = (p / grid_w) * P + ky, x0 = (p % grid_w) * P;
    const __global float *source = images + images_offset + ((b * Ch + ch) * H + y) * W + x0;
    __global float *destination = patches + patches_offset + (row * Ch + ch) * P * P + ky * P;
    for (int kx = 0; kx < P; ++kx) destination[kx] = source[kx];
}

// Global (D, N, B): one work-item per element of x, indexed without divisions.
__kernel void tokens_forward(__global const float *patch_out, const int patch_offset,
                             __global const float *cls, const int cls_offset,
                             __global const float *pos, const int pos_offset,
                             __global float *x, const int x_offset,
                             const int B, const int Np, const int D)
{
    const int c = get_global_id(0), t = get_global_id(1), b = get_global_id(2);
    const int N = Np + 1;
    const float base = t == 0 ? cls[cls_offset + c] : patch_out[patch_offset + (b * Np + t - 1) * D + c];
    x[x_offset + (b * N + t) * D + c] = base + pos[pos_offset + t * D + c];
}

// d_patch_out[b, p] = dx[b, 1 + p]. One work-item per element of d_patch_out.
__kernel void tokens_backward_patches(__global const float *dx, const int dx_offset,
                                      __global float *d_patch, const int d_patch_offset,
                                      const int B, const int Np, const int D)
{
    const int i = get_global_id(0);
    if (i >= B * Np * D) return;
    const int c = i % D, p = (i / D) % Np, b = i / (Np * D);
    d_patch[d_patch_offset + i] = dx[dx_offset + (b * (Np + 1) + 1 + p) * D + c];
}

// d_pos[t, c] (+)= sum_b dx[b, t, c]; d_cls[c] (+)= sum_b dx[b, 0, c]. One work-item per (t, c).
// want_pos / want_cls select which gradients are written (frozen ones are skipped).
__kernel void tokens_backward_params(__global const float *dx, const int dx_offset,
                                     __global float *d_pos, const int d_pos_offset,
                                     __global float *d_cls, const int d_cls_offset,
                                     const int B, const int N, const int D,
                                     const int want_pos, const int want_cls, const int accumulate)
{
    const int i = get_global_id(0);
    if (i >= N * D) return;
    const int t = i / D, c = i % D;
    float sum = 0.0f;
    for (int b = 0; b < B; ++b) sum += dx[dx_offset + (b * N + t) * D + c];
    if (want_pos) d_pos[d_pos_offset + i] = accumulate ? d_pos[d_pos_offset + i] + sum : sum;
    if (want_cls && t == 0) d_cls[d_cls_offset + c] = accumulate ? d_cls[d_cls_offset + c] + sum : sum;
}

// Mean pooling of the patch tokens (CLIPForImageClassification's head input).
// x [B * N, D] (token 0 the cls) -> pooled [B, D] = mean over t = 1..N-1 of x[b, t].
// One work-item per (c, b): consecutive work-items read consecutive columns.
__kernel void mean_patch_tokens(__global const float *x, const int x_offset,
                                __global float *pooled, const int pooled_offset,
                                const int N, const int D)
{
    const int c = get_global_id(0), b = get_global_id(1);
    const __global float *rows = x + x_offset + b * N * D + c;
    float sum = 0.0f;
    for (int t = 1; t < N; ++t) sum += rows[t * D];
    pooled[pooled_offset + b * D + c] = sum / (float)(N - 1);
}

// dx[b, t] = d_pooled[b] / (N - 1) for the patch tokens, 0 for the cls token (written, not
// accumulated). Global (D, N, B).
__kernel void mean_patch_tokens_backward(__global const float *d_pooled, const int d_pooled_offset,
                                         __global float *dx, const int dx_offset,
                                         const int N, const int D)
{
    const int c = get_global_id(0), t = get_global_id(1), b = get_global_id(2);
    dx[dx_offset + (b * N + t) * D + c] = t == 0 ? 0.0f : d_pooled[d_pooled_offset + b * D + c] / (float)(N - 1);
}
