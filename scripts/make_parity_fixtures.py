#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures the Swift tests read (Tests/Fixtures/parity/).

Run by hand (CI only reads the committed output):

    python3 -m venv ENV && ENV/bin/pip install torch==2.13.0 transformers safetensors numpy
    ENV/bin/python scripts/make_parity_fixtures.py

What it writes, for a tiny ViT (d 32, 2 blocks, 2 heads, patch 4, 16 px, 3 channels, 5 classes,
MLP 64, LayerNorm eps 1e-6) with random, non-trivial weights:

- checkpoints of ONE set of weights in three namings: hf-vit/ (transformers ViTForImageClassification,
  with config.json), hf-dinov2/ (Dinov2Model, with random LayerScale whose folding gives back the
  same weights), timm/ (fused qkv). The script checks that transformers' own ViT and Dinov2 models
  compute what the reference below computes on them, so the fixtures hold transformers' semantics.
- batch.safetensors: 3 images and their labels.
- for each method (serial r=4 alpha=8; lora q,k,v,o r=4 alpha=4 with LoRA+ ratio 4 and gradient
  clipping at norm 1; full; probe): METHOD/initial.safetensors, the starting trainable tensors in
  sloragpu's adapter format (non-zero B so the adapters matter), and METHOD/expected.safetensors:
  logits, loss, the gradient of every trainable tensor (internal names, prefix grad/), and every
  trainable tensor after 3 AdamW steps on the batch (prefix after3/).
- interpolation.safetensors: a 4x4 position grid resized bicubically to 6x6 and 3x3 by
  torch.nn.functional.interpolate (align_corners False).

The reference model is written out in plain torch below (pre-norm blocks, exact GELU, serial
adapter z = u + s (u A^T) B^T before q/k/v, LoRA W + s B A on q/k/v/o).
"""
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "parity")
D, L, H, P, S, C, K, M = 32, 2, 2, 4, 16, 3, 5, 64
EPS = 1e-6
N = (S // P) ** 2 + 1
BATCH = 3
CONFIG = {  # sloragpu's ViTConfig, as its JSON encoder writes it
    "imageSize": S, "patchSize": P, "channels": C, "width": D, "layers": L, "heads": H, "mlpWidth": M,
    "layerNormEpsilon": EPS, "classes": K, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}
CLASS_NAMES = ["zero", "one", "two", "three", "four"]

torch.manual_seed(20261129)


def randn(*shape, scale=0.2):
    return (torch.randn(*shape) * scale).float()


def block_weights(p):
    """One block's random tensors under prefix p."""
    return {
        p + "norm1.weight": 1 + randn(D), p + "norm1.bias": randn(D),
        p + "qkv.weight": randn(3 * D, D), p + "qkv.bias": randn(3 * D),
        p + "proj.weight": randn(D, D), p + "proj.bias": randn(D),
        p + "norm2.weight": 1 + randn(D), p + "norm2.bias": randn(D),
        p + "fc1.weight": randn(M, D), p + "fc1.bias": randn(M),
        p + "fc2.weight": randn(D, M), p + "fc2.bias": randn(D),
    }


def base_weights():
    """Internal names (see Sources/ViT/Parameters.swift), random and non-trivial."""
    w = {
        "patch.weight": randn(D, C * P * P), "patch.bias": randn(D), "cls": randn(D), "pos": randn(N, D),
        "norm.weight": 1 + randn(D), "norm.bias": randn(D), "head.weight": randn(K, D), "head.bias": randn(K),
    }
    for i in range(L):
        w.update(block_weights(f"blocks.{i}."))
    return w


def block_forward(w, p, x, kind, s, activation=F.gelu, eps=EPS):
    """One pre-norm block (names under prefix p) with the method's adapters; x [B, N, D]."""
    u = F.layer_norm(x, (D,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps)
    wq, wk, wv = w[p + "qkv.weight"].split(D)
    bq, bk, bv = w[p + "qkv.bias"].split(D)
    if kind == "serial":
        z = u + s * (u @ w[p + "serial.A"].T) @ w[p + "serial.B"].T
        q, k, v = z @ wq.T + bq, z @ wk.T + bk, z @ wv.T + bv
    else:
        q, k, v = u @ wq.T + bq, u @ wk.T + bk, u @ wv.T + bv
        if kind == "lora":
            lora = lambda t, inp: s * (inp @ w[p + f"lora.{t}.A"].T) @ w[p + f"lora.{t}.B"].T
            q, k, v = q + lora("q", u), k + lora("k", u), v + lora("v", u)
    dh = D // H
    heads = lambda t: t.reshape(t.shape[0], N, H, dh).transpose(1, 2)
    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(dh)
    a = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(x.shape[0], N, D)
    o = a @ w[p + "proj.weight"].T + w[p + "proj.bias"]
    if kind == "lora":
        o = o + s * (a @ w[p + "lora.o.A"].T) @ w[p + "lora.o.B"].T
    x = x + o
    u2 = F.layer_norm(x, (D,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps)
    return x + activation(u2 @ w[p + "fc1.weight"].T + w[p + "fc1.bias"]) @ w[p + "fc2.weight"].T + w[p + "fc2.bias"]


def forward(w, images, method):
    """Reference forward. w: internal names -> tensors (adapters included for serial/lora)."""
    kind, rank, alpha = method["kind"], method.get("rank"), method.get("alpha")
    s = alpha / rank if rank else 0.0
    patches = F.conv2d(images, w["patch.weight"].reshape(D, C, P, P), w["patch.bias"], stride=P)
    x = patches.flatten(2).transpose(1, 2)                               # [B, Np, D]
    x = torch.cat([w["cls"].expand(x.shape[0], 1, D), x], dim=1) + w["pos"]
    for i in range(L):
        x = block_forward(w, f"blocks.{i}.", x, kind, s)
    pooled = F.layer_norm(x[:, 0], (D,), w["norm.weight"], w["norm.bias"], EPS)
    return pooled @ w["head.weight"].T + w["head.bias"], pooled


def hf_vit_names(w):
    out = {
        "vit.embeddings.patch_embeddings.projection.weight": w["patch.weight"].reshape(D, C, P, P),
        "vit.embeddings.patch_embeddings.projection.bias": w["patch.bias"],
        "vit.embeddings.cls_token": w["cls"].reshape(1, 1, D),
        "vit.embeddings.position_embeddings": w["pos"].reshape(1, N, D),
        "vit.layernorm.weight": w["norm.weight"], "vit.layernorm.bias": w["norm.bias"],
        "classifier.weight": w["head.weight"], "classifier.bias": w["head.bias"],
    }
    for i in range(L):
        p, b = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        for part, wt, bs in zip(["query", "key", "value"], w[p + "qkv.weight"].split(D), w[p + "qkv.bias"].split(D)):
            out[b + f"attention.attention.{part}.weight"] = wt
            out[b + f"attention.attention.{part}.bias"] = bs
        for ours, theirs in [("norm1", "layernorm_before"), ("proj", "attention.output.dense"), ("norm2", "layernorm_after"),
                             ("fc1", "intermediate.dense"), ("fc2", "output.dense")]:
            out[b + theirs + ".weight"] = w[p + ours + ".weight"]
            out[b + theirs + ".bias"] = w[p + ours + ".bias"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_dinov2_names(w):
    """Dinov2Model names; LayerScale lambda random, stored weights divided by it (in float64)."""
    out = {
        "embeddings.patch_embeddings.projection.weight": w["patch.weight"].reshape(D, C, P, P),
        "embeddings.patch_embeddings.projection.bias": w["patch.bias"],
        "embeddings.cls_token": w["cls"].reshape(1, 1, D),
        "embeddings.mask_token": torch.zeros(1, D),
        "embeddings.position_embeddings": w["pos"].reshape(1, N, D),
        "layernorm.weight": w["norm.weight"], "layernorm.bias": w["norm.bias"],
    }
    for i in range(L):
        p, b = f"blocks.{i}.", f"encoder.layer.{i}."
        for part, wt, bs in zip(["query", "key", "value"], w[p + "qkv.weight"].split(D), w[p + "qkv.bias"].split(D)):
            out[b + f"attention.attention.{part}.weight"] = wt
            out[b + f"attention.attention.{part}.bias"] = bs
        out[b + "norm1.weight"], out[b + "norm1.bias"] = w[p + "norm1.weight"], w[p + "norm1.bias"]
        out[b + "norm2.weight"], out[b + "norm2.bias"] = w[p + "norm2.weight"], w[p + "norm2.bias"]
        out[b + "mlp.fc1.weight"], out[b + "mlp.fc1.bias"] = w[p + "fc1.weight"], w[p + "fc1.bias"]
        for ours, theirs, scale in [("proj", "attention.output.dense", "layer_scale1.lambda1"), ("fc2", "mlp.fc2", "layer_scale2.lambda1")]:
            lam = (0.5 + torch.rand(D)).float()
            out[b + scale] = lam
            out[b + theirs + ".weight"] = (w[p + ours + ".weight"].double() / lam.double()[:, None]).float()
            out[b + theirs + ".bias"] = (w[p + ours + ".bias"].double() / lam.double()).float()
    return {k: v.contiguous().clone() for k, v in out.items()}


def timm_names(w):
    out = {
        "patch_embed.proj.weight": w["patch.weight"].reshape(D, C, P, P), "patch_embed.proj.bias": w["patch.bias"],
        "cls_token": w["cls"].reshape(1, 1, D), "pos_embed": w["pos"].reshape(1, N, D),
        "norm.weight": w["norm.weight"], "norm.bias": w["norm.bias"], "head.weight": w["head.weight"], "head.bias": w["head.bias"],
    }
    for i in range(L):
        p, b = f"blocks.{i}.", f"blocks.{i}."
        for ours, theirs in [("norm1", "norm1"), ("qkv", "attn.qkv"), ("proj", "attn.proj"), ("norm2", "norm2"),
                             ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")]:
            out[b + theirs + ".weight"] = w[p + ours + ".weight"]
            out[b + theirs + ".bias"] = w[p + ours + ".bias"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def transformers_configs():
    from transformers import Dinov2Config, ViTConfig
    cfg = ViTConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=M, image_size=S,
                    patch_size=P, num_channels=C, num_labels=K, layer_norm_eps=EPS, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, qkv_bias=True)
    cfg.id2label = dict(enumerate(CLASS_NAMES))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    dcfg = Dinov2Config(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, mlp_ratio=M // D, image_size=S,
                        patch_size=P, num_channels=C, layer_norm_eps=EPS, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, qkv_bias=True)
    return cfg, dcfg


def check_against_transformers(w, images):
    """transformers' own models, loaded from the checkpoints just written (so its key
    conversion applies), compute what `forward` computes."""
    from transformers import Dinov2Model, ViTForImageClassification
    reference, pooled = forward(w, images, {"kind": "probe"})
    vit, info = ViTForImageClassification.from_pretrained(os.path.join(OUT, "hf-vit"), output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        got = vit.eval()(pixel_values=images).logits
    assert torch.allclose(got, reference, atol=1e-5), (got - reference).abs().max()
    dino, info = Dinov2Model.from_pretrained(os.path.join(OUT, "hf-dinov2"), output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        got = dino.eval()(pixel_values=images).pooler_output
    assert torch.allclose(got, pooled, atol=1e-5), (got - pooled).abs().max()
    print("transformers ViTForImageClassification and Dinov2Model agree with the reference")


def adapter_external_name(name):
    if name == "head.weight":
        return "classifier.weight"
    if name == "head.bias":
        return "classifier.bias"
    parts = name.split(".")
    layer = parts[1]
    if parts[2] == "serial":
        return f"vit.encoder.layer.{layer}.serial_lora.{parts[3]}"
    module = {"q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
              "o": "attention.output.dense"}[parts[3]]
    return f"base_model.model.vit.encoder.layer.{layer}.{module}.lora_{parts[4]}.weight"


METHODS = {
    "serial": {"kind": "serial", "rank": 4, "alpha": 8.0},
    "lora": {"kind": "lora", "rank": 4, "alpha": 4.0, "targets": ["q", "k", "v", "o"], "lora_plus": 4.0, "clip": 1.0},
    "full": {"kind": "full"},
    "probe": {"kind": "probe"},
}


def trainable_names(method, w):
    if method["kind"] == "full":
        return sorted(w)
    names = ["head.weight", "head.bias"]
    for i in range(L):
        if method["kind"] == "serial":
            names += [f"blocks.{i}.serial.A", f"blocks.{i}.serial.B"]
        elif method["kind"] == "lora":
            for t in method["targets"]:
                names += [f"blocks.{i}.lora.{t}.A", f"blocks.{i}.lora.{t}.B"]
    return names


def decays(name):
    return name.endswith(".A") or name.endswith(".B") or (name.endswith("weight") and "norm" not in name)


def expectations(w, names, method, logits_of, labels):
    """Logits, loss, the gradient of every trainable tensor (grad/) and every trainable tensor
    after 3 AdamW steps (after3/; per-group lr and decay as sloragpu's, LoRA+ and clipping when
    the method has them). logits_of(weights) runs the reference forward."""
    params = {n: w[n].clone().requires_grad_(True) for n in names}
    weights = lambda: {**w, **params}
    logits = logits_of(weights())
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    expected = {"logits": logits.detach(), "loss": loss.detach().reshape(1)}
    for n in names:
        expected["grad/" + n] = params[n].grad.detach().clone()
    ratio = method.get("lora_plus", 1.0)
    groups = [
        {"params": [params[n] for n in names if decays(n) and not n.endswith(".B")], "weight_decay": 0.05, "lr": 1e-2},
        {"params": [params[n] for n in names if not decays(n)], "weight_decay": 0.0, "lr": 1e-2},
        {"params": [params[n] for n in names if n.endswith(".B")], "weight_decay": 0.05, "lr": 1e-2 * ratio},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.999), eps=1e-8)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(logits_of(weights()), labels).backward()
        if "clip" in method:
            torch.nn.utils.clip_grad_norm_(list(params.values()), method["clip"])
        optimizer.step()
    for n in names:
        expected["after3/" + n] = params[n].detach().clone()
    return expected, loss


def write_method(key, method, base, images, labels):
    w = {k: v.clone() for k, v in base.items()}
    if method["kind"] in ("serial", "lora"):
        for name in trainable_names(method, w):
            if name.startswith("blocks."):
                w[name] = randn(method["rank"], D, scale=1 / math.sqrt(D)) if name.endswith(".A") else randn(D, method["rank"], scale=0.1)
    names = trainable_names(method, w)
    directory = os.path.join(OUT, key)
    os.makedirs(directory, exist_ok=True)

    metadata = {"format": "sloragpu-adapter", "method": key, "config": json.dumps(CONFIG, sort_keys=True, separators=(",", ":")),
                "class_names": json.dumps(CLASS_NAMES, separators=(",", ":"))}
    if "rank" in method:
        metadata["rank"], metadata["alpha"] = str(method["rank"]), str(method["alpha"])
    if "targets" in method:
        metadata["targets"] = ",".join(method["targets"])
    if method["kind"] == "full":
        initial = hf_vit_names(w)
    else:
        initial = {adapter_external_name(n): w[n].contiguous() for n in names}
    save_file(initial, os.path.join(directory, "initial.safetensors"), metadata=metadata)

    expected, loss = expectations(w, names, method, lambda weights: forward(weights, images, method)[0], labels)
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(directory, "expected.safetensors"))
    print(f"{key}: loss {loss.item():.6f}, {len(names)} trainable tensors")


def main():
    os.makedirs(OUT, exist_ok=True)
    base = base_weights()
    images = torch.randn(BATCH, C, S, S)
    labels = torch.tensor([1, 4, 0])
    vit_cfg, dino_cfg = transformers_configs()
    for name, tensors in [("hf-vit", hf_vit_names(base)), ("hf-dinov2", hf_dinov2_names(base)), ("timm", timm_names(base))]:
        os.makedirs(os.path.join(OUT, name), exist_ok=True)
        save_file(tensors, os.path.join(OUT, name, "model.safetensors"), metadata={"format": "pt"})
    vit_cfg.to_json_file(os.path.join(OUT, "hf-vit", "config.json"))
    dino_cfg.to_json_file(os.path.join(OUT, "hf-dinov2", "config.json"))
    check_against_transformers(base, images)
    save_file({"images": images, "labels": labels.float()}, os.path.join(OUT, "batch.safetensors"))

    for key, method in METHODS.items():
        write_method(key, method, base, images, labels)

    grid = randn(1, 1 + 16, D)
    resized = {"source": grid}
    for size in (6, 3):
        g = grid[:, 1:].reshape(1, 4, 4, D).permute(0, 3, 1, 2)
        r = F.interpolate(g, size=(size, size), mode="bicubic", align_corners=False)
        resized[f"to{size}"] = torch.cat([grid[:, :1], r.permute(0, 2, 3, 1).reshape(1, size * size, D)], dim=1)
    save_file({k: v.contiguous() for k, v in resized.items()}, os.path.join(OUT, "interpolation.safetensors"))
    print("fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
