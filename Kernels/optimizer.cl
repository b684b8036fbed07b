// Optimizers over one flat slab of n trainable parameters (params, grads, state all [n]).
// Each parameter belongs to a group (group[i], uchar): group_lr[g] multiplies the learning
// rate (LoRA+ gives B a higher rate than A) and group_decay[g] is 1 where weight decay applies
// (not on biases and norms). grad_scale[0] multiplies every gradient: it is the clipping
// factor computed on the device (clip_factor), so clipping needs no host round trip.

// AdamW (decoupled weight decay, as torch.optim.AdamW):
//   p -= lr_g * wd * p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   p -= lr_g * (m / bc1) / (sqrt(v / bc2) + eps),  bc1 = 1 - b1^t, bc2 = 1 - b2^t.
__kernel void adamw_step(__global float *params, __global const float *grads,
                         __global float *m, __global float *v,
                         __global const uchar *group, __global const float *group_lr,
                         __global const float *group_decay, __global const float *grad_scale,
                         const int n, const float lr, const float beta1, const float beta2,
                         const float eps, const float weight_decay, const float bc1, const float bc2)
{
    const int i = get_global_id(0);
    if (i >= n) return;
    const int g_index = group[i];
    const float rate = lr * group_lr[g_index];
    const float g = grads[i] * grad_scale[0];
    float p = params[i];
    p -= rate * weight_decay * group_decay[g_index] * p;
    const float m_new = beta1 * m[i] + (1.0f - beta1) * g;
    const float v_new = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = m_new;
    v[i] = v_new;
    params[i] = p - rate * (m_new / bc1) / (sqrt(v_new / bc2) + eps);
}

// SGD with momentum (as torch.optim.SGD, dampening 0, coupled weight decay):
//   g += wd * p;  buf = mu * buf + g;  p -= lr_g * buf.
__kernel void sgd_step(__global float *params, __global const float *grads, __global float *momentum,
                       __global const uchar *group, __global const float *group_lr,
                       __global const float *group_decay, __global const float *grad_scale,
                       const int n, const float lr, const float mu, const float weight_decay)
{
    const int i = get_global_id(0);
    if (i >= n) return;
    const int g_index = group[i];
    const float p = params[i];
    const float g = grads[i] * grad_scale[0] + weight_decay * group_decay[g_index] * p;
    const float buf = mu * momentum[i] + g;
    momentum[i] = buf;
    params[i] = p - lr * group_lr[g_index] * buf;
}

// factor[0] = min(1, max_norm / (sqrt(sum_squares[0]) + 1e-6)), as torch.nn.utils.clip_grad_norm_.
__kernel void clip_factor(__global const float *sum_squares, __global float *factor, const float max_norm)
{
    if (get_global_id(0) != 0) return;
    factor[0] = fmin(1.0f, max_norm / (sqrt(sum_squares[0]) + 1e-6f));
}
