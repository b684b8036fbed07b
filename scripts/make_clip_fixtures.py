#!/usr/bin/env python3
"""Writes the CLIP parity fixtures the Swift tests read (Tests/Fixtures/clip/).

Run by hand (CI only reads the committed output):

    python3 -m venv ENV && ENV/bin/pip install torch==2.13.0 transformers safetensors numpy open_clip_torch
    ENV/bin/python scripts/make_clip_fixtures.py

A tiny CLIP vision tower (d 32, 2 blocks, 2 heads, patch 4, 16 px, MLP 64, quick GELU,
LayerNorm eps 1e-5, a projection to 24, 5 classes) with random, non-trivial weights, in two
namings and with the head each naming's ecosystem puts on it:

- hf-clip/: transformers CLIPForImageClassification (config.json with vision_config; the head
  on the mean of the last block's patch tokens, post_layernorm unused). The script checks that
  transformers' own class computes what the reference below computes.
- open-clip/: open_clip's visual tower (open_clip_config.json, `visual.*` keys, `visual.proj`
  [d, e]) plus sloragpu's classifier on the image features (ln_post of the cls token, then the
  projection). The script checks open_clip's VisionTransformer gives the reference's features.
- hf-clip-model/: transformers CLIPModel (the same tower and projection as open-clip/, a tiny
  random text tower) and features.safetensors, transformers' own get_image_features on the
  batch (pooler_output), which sloragpu's pooled features must match.
- For each naming and method (serial r=4 alpha=8; lora q,k,v,o r=4 alpha=4 with LoRA+ ratio 4
  and clipping at norm 1; full; probe): NAMING/METHOD/initial.safetensors, the starting
  trainable tensors in sloragpu's adapter format (HF CLIP names), and expected.safetensors:
  logits, loss, every trainable tensor's gradient (grad/) and every trainable tensor after 3
  AdamW steps (after3/), internal names.

The batch (images, labels) is batch.safetensors.
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_parity_fixtures import (  # noqa: E402
    METHODS, block_forward, block_weights, expectations, trainable_names as vit_trainable_names, D, L, H, P, S, C, K, M,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "clip")
E = 24  # the visual projection's width; the tower has the ViT fixtures' sizes
EPS = 1e-5
N = (S // P) ** 2 + 1
BATCH = 3
CLASS_NAMES = ["zero", "one", "two", "three", "four"]
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
ARCHITECTURES = {
    "hf-clip": {"family": "clip", "activation": "quick_gelu", "embeddingNorm": True, "patchBias": False, "pooling": "mean_patches"},
    "open-clip": {"family": "clip", "activation": "quick_gelu", "embeddingNorm": True, "patchBias": False, "pooling": "cls",
                  "projection": E},
}

torch.manual_seed(20261201)


def randn(*shape, scale=0.2):
    return (torch.randn(*shape) * scale).float()


def config_json(naming):
    """sloragpu's ViTConfig, as its JSON encoder writes it."""
    return {"imageSize": S, "patchSize": P, "channels": C, "width": D, "layers": L, "heads": H, "mlpWidth": M,
            "layerNormEpsilon": EPS, "classes": K, "mean": MEAN, "std": STD, "architecture": ARCHITECTURES[naming]}


def base_weights(naming):
    w = {"patch.weight": randn(D, C * P * P), "cls": randn(D), "pos": randn(N, D),
         "embedding_norm.weight": 1 + randn(D), "embedding_norm.bias": randn(D),
         "norm.weight": 1 + randn(D), "norm.bias": randn(D)}
    for i in range(L):
        w.update(block_weights(f"blocks.{i}."))
    if naming == "open-clip":
        w["projection.weight"] = randn(E, D, scale=0.3)
    features = E if naming == "open-clip" else D
    w["head.weight"], w["head.bias"] = randn(K, features), randn(K)
    return w


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def forward(w, images, method, pooling):
    """Reference forward: CLIP's tower (pre-LN on the tokens, quick GELU, no patch bias) with
    the method's adapters; pooling "mean_patches" or "cls" (ln_post + projection)."""
    kind, rank, alpha = method["kind"], method.get("rank"), method.get("alpha")
    s = alpha / rank if rank else 0.0
    x = F.conv2d(images, w["patch.weight"].reshape(D, C, P, P), None, stride=P).flatten(2).transpose(1, 2)
    x = torch.cat([w["cls"].expand(x.shape[0], 1, D), x], dim=1) + w["pos"]
    x = F.layer_norm(x, (D,), w["embedding_norm.weight"], w["embedding_norm.bias"], EPS)
    for i in range(L):
        x = block_forward(w, f"blocks.{i}.", x, kind, s, activation=quick_gelu, eps=EPS)
    if pooling == "mean_patches":
        features = x[:, 1:].mean(dim=1)
    else:
        features = F.layer_norm(x[:, 0], (D,), w["norm.weight"], w["norm.bias"], EPS) @ w["projection.weight"].T
    return features @ w["head.weight"].T + w["head.bias"], features


def tower_names(w, prefix):
    """transformers' CLIP vision tower names."""
    out = {
        prefix + "embeddings.patch_embedding.weight": w["patch.weight"].reshape(D, C, P, P),
        prefix + "embeddings.class_embedding": w["cls"], prefix + "embeddings.position_embedding.weight": w["pos"],
        prefix + "pre_layrnorm.weight": w["embedding_norm.weight"], prefix + "pre_layrnorm.bias": w["embedding_norm.bias"],
        prefix + "post_layernorm.weight": w["norm.weight"], prefix + "post_layernorm.bias": w["norm.bias"],
    }
    for i in range(L):
        p, b = f"blocks.{i}.", f"{prefix}encoder.layers.{i}."
        for part, wt, bs in zip("qkv", w[p + "qkv.weight"].split(D), w[p + "qkv.bias"].split(D)):
            out[b + f"self_attn.{part}_proj.weight"], out[b + f"self_attn.{part}_proj.bias"] = wt, bs
        for ours, theirs in [("norm1", "layer_norm1"), ("proj", "self_attn.out_proj"), ("norm2", "layer_norm2"), ("fc1", "mlp.fc1"), ("fc2", "mlp.fc2")]:
            out[b + theirs + ".weight"], out[b + theirs + ".bias"] = w[p + ours + ".weight"], w[p + ours + ".bias"]
    return out


def hf_clip_names(w):
    out = tower_names(w, "vision_model.")
    if "projection.weight" in w:
        out["visual_projection.weight"] = w["projection.weight"]
    out["classifier.weight"], out["classifier.bias"] = w["head.weight"], w["head.bias"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def open_clip_names(w):
    out = {
        "visual.conv1.weight": w["patch.weight"].reshape(D, C, P, P), "visual.class_embedding": w["cls"],
        "visual.positional_embedding": w["pos"], "visual.ln_pre.weight": w["embedding_norm.weight"],
        "visual.ln_pre.bias": w["embedding_norm.bias"], "visual.ln_post.weight": w["norm.weight"], "visual.ln_post.bias": w["norm.bias"],
        "visual.proj": w["projection.weight"].T, "classifier.weight": w["head.weight"], "classifier.bias": w["head.bias"],
    }
    for i in range(L):
        p, b = f"blocks.{i}.", f"visual.transformer.resblocks.{i}."
        out[b + "attn.in_proj_weight"], out[b + "attn.in_proj_bias"] = w[p + "qkv.weight"], w[p + "qkv.bias"]
        for ours, theirs in [("norm1", "ln_1"), ("proj", "attn.out_proj"), ("norm2", "ln_2"), ("fc1", "mlp.c_fc"), ("fc2", "mlp.c_proj")]:
            out[b + theirs + ".weight"], out[b + theirs + ".bias"] = w[p + ours + ".weight"], w[p + ours + ".bias"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def vision_config():
    from transformers import CLIPVisionConfig
    return CLIPVisionConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=M, image_size=S,
                            patch_size=P, num_channels=C, layer_norm_eps=EPS, hidden_act="quick_gelu", projection_dim=E)


def open_clip_config():
    return {"model_cfg": {"embed_dim": E, "quick_gelu": True,
                          "vision_cfg": {"image_size": S, "layers": L, "width": D, "patch_size": P, "head_width": D // H, "mlp_ratio": M / D}},
            "preprocess_cfg": {"mean": MEAN, "std": STD}, "class_names": CLASS_NAMES}


def write_checkpoints(bases, images):
    from transformers import CLIPConfig, CLIPForImageClassification
    directory = os.path.join(OUT, "hf-clip")
    os.makedirs(directory, exist_ok=True)
    save_file(hf_clip_names(bases["hf-clip"]), os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config = CLIPConfig(vision_config=vision_config().to_dict(), num_labels=K)
    config.id2label = dict(enumerate(CLASS_NAMES))
    config.label2id = {v: k for k, v in config.id2label.items()}
    config.architectures = ["CLIPForImageClassification"]
    config.to_json_file(os.path.join(directory, "config.json"))
    model, info = CLIPForImageClassification.from_pretrained(directory, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    reference, _ = forward(bases["hf-clip"], images, {"kind": "probe"}, "mean_patches")
    with torch.no_grad():
        got = model.eval()(pixel_values=images).logits
    assert torch.allclose(got, reference, atol=1e-5), (got - reference).abs().max()
    print("transformers CLIPForImageClassification agrees with the reference")

    write_clip_model(bases["open-clip"], images)

    directory = os.path.join(OUT, "open-clip")
    os.makedirs(directory, exist_ok=True)
    tensors = open_clip_names(bases["open-clip"])
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(directory, "open_clip_config.json"), "w") as f:
        json.dump(open_clip_config(), f, indent=2, sort_keys=True)
    from open_clip.model import _build_vision_tower
    cfg = open_clip_config()["model_cfg"]
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg["quick_gelu"])
    visual.load_state_dict({k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}, strict=True)
    _, features = forward(bases["open-clip"], images, {"kind": "probe"}, "cls")
    with torch.no_grad():
        got = visual.eval()(images)
    assert torch.allclose(got, features, atol=1e-5), (got - features).abs().max()
    print("open_clip VisionTransformer agrees with the reference")


def write_clip_model(w, images):
    """CLIPModel: the vision tower, its visual projection and a tiny text tower (ignored)."""
    from transformers import CLIPConfig, CLIPModel
    directory = os.path.join(OUT, "hf-clip-model")
    os.makedirs(directory, exist_ok=True)
    text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = CLIPConfig(vision_config=vision_config().to_dict(), text_config=text, projection_dim=E)
    config.architectures = ["CLIPModel"]
    with torch.random.fork_rng():  # the text tower's random init leaves the other fixtures' draws alone
        model = CLIPModel(config)
    state = model.state_dict()
    tower = {k: v for k, v in hf_clip_names(w).items() if not k.startswith("classifier.")}
    state.update(tower)
    model.load_state_dict(state, strict=True)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    config.to_json_file(os.path.join(directory, "config.json"))
    reloaded, info = CLIPModel.from_pretrained(directory, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.no_grad():
        features = reloaded.eval().get_image_features(pixel_values=images).pooler_output
    _, reference = forward(w, images, {"kind": "probe"}, "cls")
    assert torch.allclose(features, reference, atol=1e-5), (features - reference).abs().max()
    save_file({"features": features.contiguous()}, os.path.join(directory, "features.safetensors"))
    print("transformers CLIPModel image features agree with the reference")


def adapter_external_name(name):
    if name in ("head.weight", "head.bias"):
        return "classifier." + name.split(".")[1]
    parts = name.split(".")
    stem = f"vision_model.encoder.layers.{parts[1]}"
    if parts[2] == "serial":
        return f"{stem}.serial_lora.{parts[3]}"
    module = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.out_proj"}[parts[3]]
    return f"base_model.model.{stem}.{module}.lora_{parts[4]}.weight"


def trainable_names(method, w, pooling):
    if method["kind"] == "full" and pooling == "mean_patches":
        # Mean pooling leaves post_layernorm without a gradient: sloragpu keeps it frozen.
        return sorted(n for n in w if not n.startswith("norm."))
    return vit_trainable_names(method, w)


def write_method(naming, key, method, base, images, labels):
    pooling = ARCHITECTURES[naming]["pooling"]
    w = {k: v.clone() for k, v in base.items()}
    names = trainable_names(method, w, pooling)
    if method["kind"] in ("serial", "lora"):
        for name in names:
            if name.startswith("blocks."):
                w[name] = randn(method["rank"], D, scale=1 / math.sqrt(D)) if name.endswith(".A") else randn(D, method["rank"], scale=0.1)
    directory = os.path.join(OUT, naming, key)
    os.makedirs(directory, exist_ok=True)
    metadata = {"format": "sloragpu-adapter", "method": key, "config": json.dumps(config_json(naming), sort_keys=True, separators=(",", ":")),
                "class_names": json.dumps(CLASS_NAMES, separators=(",", ":"))}
    if "rank" in method:
        metadata["rank"], metadata["alpha"] = str(method["rank"]), str(method["alpha"])
    if "targets" in method:
        metadata["targets"] = ",".join(method["targets"])
    initial = hf_clip_names(w) if method["kind"] == "full" else {adapter_external_name(n): w[n].contiguous() for n in names}
    save_file(initial, os.path.join(directory, "initial.safetensors"), metadata=metadata)

    expected, loss = expectations(w, names, method, lambda weights: forward(weights, images, method, pooling)[0], labels)
    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(directory, "expected.safetensors"))
    print(f"{naming} {key}: loss {loss.item():.6f}, {len(names)} trainable tensors")


def main():
    os.makedirs(OUT, exist_ok=True)
    shared = base_weights("open-clip")
    bases = {"open-clip": shared, "hf-clip": {**{k: v for k, v in shared.items() if k != "projection.weight"},
                                              "head.weight": randn(K, D), "head.bias": randn(K)}}
    images = torch.randn(BATCH, C, S, S)
    labels = torch.tensor([1, 4, 0])
    write_checkpoints(bases, images)
    save_file({"images": images, "labels": labels.float()}, os.path.join(OUT, "batch.safetensors"))
    for naming, base in bases.items():
        for key, method in METHODS.items():
            write_method(naming, key, method, base, images, labels)
    print("fixtures written to", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
