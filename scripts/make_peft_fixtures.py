#!/usr/bin/env python3
"""Writes the Hugging Face interop fixtures the Swift tests read (Tests/Fixtures/peft/).

Run by hand (CI only reads the committed output), once per transformers generation, after
writing sloragpu's own exports of the parity fixture's LoRA adapter:

    swift build
    B=.build/debug/sloragpu; P=Tests/Fixtures/parity; O=Tests/Fixtures/peft
    $B export peft --adapter $P/lora/initial.safetensors --naming transformers5 --output $O/from-sloragpu-t5
    $B export peft --adapter $P/lora/initial.safetensors --naming transformers4 --output $O/from-sloragpu-t4
    $B merge --adapter $P/lora/initial.safetensors --model $P/hf-vit --output $O/merged
    python3 -m venv ENV && ENV/bin/pip install torch==2.13.0 transformers==5.23.0 peft==0.21.2 safetensors numpy pillow
    ENV/bin/python scripts/make_peft_fixtures.py
    ENV/bin/pip install --target T4 "transformers==4.57.*" "huggingface_hub<1.0" "tokenizers<0.23"
    PYTHONPATH=T4 ENV/bin/python scripts/make_peft_fixtures.py

What it writes (base: the parity fixture's hf-vit ViTForImageClassification, 5 classes, 16 px):
- vit-tN/: a PEFT LoRA adapter made by PEFT itself under transformers N (r 4, alpha 8, q, k, v, o,
  head in modules_to_save), with random non-zero A, B and head, and expected/vit-tN.safetensors:
  PEFT's logits on the parity batch.
- rslora-t5/ (transformers 5 only): q and v only, use_rslora (scale alpha / sqrt(r)).
- expected/from-sloragpu-tN.safetensors: PEFT's logits for sloragpu's export of the parity LoRA
  adapter, loaded with PeftModel.from_pretrained on the base.
- expected/merged.safetensors (transformers 5): the logits of sloragpu's merge output through
  AutoImageProcessor + ViTForImageClassification, and pipeline("image-classification")'s top
  label, on preprocessor/image.png (which shows the merged preprocessor_config.json loads).
- preprocessor/ (transformers 5): the hf-vit base saved with a ViTImageProcessor of mean and std
  0.5, an image, and expected/preprocessor.safetensors: transformers' logits through that
  processor (sloragpu must take the normalisation from preprocessor_config.json).
"""
import json
import os
import shutil

import numpy as np
import torch
import transformers
from PIL import Image
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, ViTForImageClassification, ViTImageProcessor, pipeline

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures")
PARITY, OUT = os.path.join(ROOT, "parity"), os.path.join(ROOT, "peft")
GENERATION = int(transformers.__version__.split(".")[0])
EXPECTED = os.path.join(OUT, "expected")
os.makedirs(EXPECTED, exist_ok=True)
torch.manual_seed(20261201 + GENERATION)


def base():
    model = ViTForImageClassification.from_pretrained(os.path.join(PARITY, "hf-vit"), attn_implementation="eager")
    return model.eval()


def batch_images():
    return load_file(os.path.join(PARITY, "batch.safetensors"))["images"]


def save_logits(name, logits, **extra):
    tensors = {"logits": logits.detach().float().contiguous()}
    tensors.update({k: torch.tensor(v, dtype=torch.float32) for k, v in extra.items()})
    save_file(tensors, os.path.join(EXPECTED, name + ".safetensors"),
              metadata={"transformers": transformers.__version__, "peft": __import__("peft").__version__})


def randomize(model):
    """A, B and the trained head random and non-trivial, so that every factor matters."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name or "modules_to_save" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.3)


def peft_adapter(name, targets, **options):
    model = get_peft_model(base(), LoraConfig(r=4, lora_alpha=8, target_modules=targets, modules_to_save=["classifier"], **options))
    randomize(model)
    model.eval()
    directory = os.path.join(OUT, name)
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory)
    os.remove(os.path.join(directory, "README.md"))  # PEFT's generated model card
    config_path = os.path.join(directory, "adapter_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = "Tests/Fixtures/parity/hf-vit"  # not this machine's absolute path
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    with torch.no_grad():
        save_logits(name, model(pixel_values=batch_images()).logits)


def load_sloragpu_export(name):
    directory = os.path.join(OUT, name)
    if not os.path.isdir(directory):
        raise SystemExit(f"{directory} is missing: write it with sloragpu export peft first (see the docstring)")
    model = PeftModel.from_pretrained(base(), directory).eval()
    with torch.no_grad():
        save_logits(name, model(pixel_values=batch_images()).logits)


def image():
    """A 16 x 16 RGB image: resizing to the model's 16 px is the identity, so transformers' PIL
    resize and sloragpu's bilinear resize agree exactly."""
    pixels = (np.arange(16 * 16 * 3).reshape(16, 16, 3) * 37 % 256).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


if GENERATION >= 5:
    peft_adapter("vit-t5", ["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_adapter("rslora-t5", ["q_proj", "v_proj"], use_rslora=True)
    load_sloragpu_export("from-sloragpu-t5")

    # The merged checkpoint through transformers' own preprocessing and pipeline.
    merged = os.path.join(OUT, "merged")
    processor = AutoImageProcessor.from_pretrained(merged)
    model = ViTForImageClassification.from_pretrained(merged, attn_implementation="eager").eval()
    preprocessor_dir = os.path.join(OUT, "preprocessor")
    shutil.rmtree(preprocessor_dir, ignore_errors=True)
    os.makedirs(preprocessor_dir)
    image().save(os.path.join(preprocessor_dir, "image.png"))
    with torch.no_grad():
        logits = model(**processor(images=image(), return_tensors="pt")).logits
    top = pipeline("image-classification", model=merged)(image())[0]["label"]
    save_logits("merged", logits, top_index=[model.config.label2id[top]])

    # A base saved with a preprocessor of mean and std 0.5.
    base().save_pretrained(preprocessor_dir)
    half = ViTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], size={"height": 16, "width": 16})
    half.save_pretrained(preprocessor_dir)
    with torch.no_grad():
        save_logits("preprocessor", base()(**half(images=image(), return_tensors="pt")).logits)
else:
    peft_adapter("vit-t4", ["query", "key", "value", "attention.output.dense"])
    load_sloragpu_export("from-sloragpu-t4")

print(f"wrote the transformers {transformers.__version__} fixtures into {OUT}")
