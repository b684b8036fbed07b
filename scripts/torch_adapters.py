"""Serial LoRA and LoRA on transformers' ViT/Dinov2 models in plain PyTorch, with sloragpu's
conventions (same init, scale, parameter groups), for side-by-side benchmarks and recipes.

- Serial LoRA: one pair per block, applied to the tokens entering q/k/v through a forward
  pre-hook on the attention module: z = u + s (u A^T) B^T, s = alpha / r.
- LoRA: W x + s B A x on the target projections (q, k, v, o).
- A ~ U(-1/sqrt(d), 1/sqrt(d)) (Kaiming-uniform, a = sqrt 5), B = 0; everything else frozen
  except the head; AdamW groups: no decay on biases, norms, cls and positions; B at
  lr * lora_plus_ratio.
"""
import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, base.in_features).uniform_(-1 / math.sqrt(base.in_features), 1 / math.sqrt(base.in_features)))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def blocks(model):
    """The transformer blocks of a transformers ViT / Dinov2 model (4.x or 5.x module names)."""
    for path in ("vit.layers", "vit.encoder.layer", "layers", "encoder.layer", "dinov2.layers", "dinov2.encoder.layer"):
        module = model
        try:
            for part in path.split("."):
                module = getattr(module, part)
            return list(module)
        except AttributeError:
            continue
    raise ValueError("no transformer blocks found")


def attach(model, method: str, rank: int = 8, alpha: float = 8.0, targets=("q", "k", "v", "o")):
    """Adds adapters in place; returns the list of adapter parameters."""
    adapters = []
    for block in blocks(model):
        attention = block.attention
        width = attention.q_proj.in_features if hasattr(attention, "q_proj") else attention.attention.query.in_features
        if method == "serial":
            A = nn.Parameter(torch.empty(rank, width).uniform_(-1 / math.sqrt(width), 1 / math.sqrt(width)))
            B = nn.Parameter(torch.zeros(width, rank))
            block.register_parameter("serial_A", A)
            block.register_parameter("serial_B", B)
            scale = alpha / rank

            def hook(module, args, kwargs, A=A, B=B, scale=scale):
                u = args[0] if args else kwargs["hidden_states"]
                z = u + scale * (u @ A.T) @ B.T
                return ((z,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": z})

            attention.register_forward_pre_hook(hook, with_kwargs=True)
            adapters += [A, B]
        elif method == "lora":
            names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
            for target in targets:
                wrapped = LoRALinear(getattr(attention, names[target]), rank, alpha)
                setattr(attention, names[target], wrapped)
                adapters += [wrapped.A, wrapped.B]
    return adapters


def trainable_groups(model, method, adapters, lr, weight_decay, lora_plus_ratio=1.0, head_names=("classifier",)):
    """Freezes per method and returns AdamW parameter groups."""
    adapter_ids = {id(p) for p in adapters}
    for name, p in model.named_parameters():
        is_head = any(name.startswith(h) for h in head_names)
        p.requires_grad = method == "full" or is_head or id(p) in adapter_ids
    decay, no_decay, up = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in adapter_ids and p.shape[0] > p.shape[1]:  # B is [d, r]
            up.append(p)
        elif p.ndim < 2 or "norm" in name or "cls_token" in name or "position" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}, {"params": no_decay, "weight_decay": 0.0, "lr": lr},
              {"params": up, "weight_decay": weight_decay, "lr": lr * lora_plus_ratio}]
    return [g for g in groups if g["params"]]
