#!/usr/bin/env python3
"""Checks that a LoRA adapter saved by polarity (Llama::save_lora) loads in PEFT and computes polarity's logits.

Given a base model directory (a transformers LlamaForCausalLM checkpoint), an adapter directory written by
polarity (adapter_config.json + adapter_model.safetensors) and, optionally, the logits polarity computed
(a .safetensors file with `input_ids`, `attention_mask` and `logits`, plus `base_logits` if available):

1. loads the base model in float32 and the adapter with `peft.PeftModel.from_pretrained`, recording
   PEFT's warnings (it warns about missing adapter keys);
2. checks that the adapter's state dict in PEFT (`get_peft_model_state_dict`) has exactly the keys of
   adapter_model.safetensors (no missing, no unexpected key), with the same shapes and exactly the same
   values, and that PEFT read r, lora_alpha and the target modules of adapter_config.json;
3. runs the model (eval mode: no dropout) on polarity's inputs and compares the logits with polarity's
   (max absolute error over every position, padded ones included; also over real tokens only), and the
   base model without the adapter with `base_logits`.

Exits 0 when every check passes and the logits agree within --tolerance (default 1e-4), else 1.

Produce polarity's side and run the check (PyTorch, transformers, peft in a virtualenv outside the
repository, see scripts/pytorch_reference.py):

    cargo run --example export_lora_adapter -- --out /tmp/polarity-adapter
    /tmp/venv/bin/pip install peft
    /tmp/venv/bin/python scripts/check_peft_adapter.py /tmp/polarity-adapter

The logits file defaults to ADAPTER_DIR/polarity_logits.safetensors (where the example writes it).
"""

import argparse
import json
import os
import sys
import warnings

import peft
import torch
import transformers
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

DEFAULT_BASE = "../shared/fixtures/tiny-llama/model"
LOGITS_FILE = "polarity_logits.safetensors"


def max_abs_err(ours, theirs, mask=None):
    diff = (ours.float() - theirs.float()).abs()
    if mask is not None:
        diff = diff[mask.bool()]
    return float(diff.max()) if diff.numel() else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("adapter_dir", help="the adapter directory polarity wrote (Llama::save_lora)")
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"the base model directory (default {DEFAULT_BASE})")
    parser.add_argument(
        "--logits", help=f"polarity's logits (default: ADAPTER_DIR/{LOGITS_FILE} if present; 'none' to skip)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max absolute logit error (default 1e-4)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    logits_path = args.logits
    if logits_path is None:
        candidate = os.path.join(args.adapter_dir, LOGITS_FILE)
        logits_path = candidate if os.path.exists(candidate) else None
    elif logits_path == "none":
        logits_path = None

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    failures = []

    def check(name, ok, detail=""):
        print(f"{name:40s} {'ok' if ok else 'FAIL'}  {detail}")
        if not ok:
            failures.append(name)

    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    base.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, args.adapter_dir)
    model.eval()
    peft_warnings = [str(w.message) for w in caught]
    for message in peft_warnings:
        print(f"  PEFT warning: {message}")
    key_warnings = [m for m in peft_warnings if "missing adapter keys" in m or "nexpected" in m]
    check("peft: no missing/unexpected key warnings", not key_warnings, f"{len(key_warnings)} warning(s)")

    # The configuration as PEFT read it.
    with open(os.path.join(args.adapter_dir, "adapter_config.json")) as f:
        config_json = json.load(f)
    config = model.peft_config["default"]
    read = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    wanted = {
        "r": config_json["r"],
        "lora_alpha": config_json["lora_alpha"],
        "target_modules": sorted(config_json["target_modules"]),
    }
    check("config: r, lora_alpha, target_modules", read == wanted, json.dumps(read))

    # The adapter weights PEFT holds against the file, key by key.
    saved = load_file(os.path.join(args.adapter_dir, "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(model)
    missing = sorted(set(loaded) - set(saved))
    unexpected = sorted(set(saved) - set(loaded))
    check("keys: none missing from the file", not missing, f"{len(loaded)} adapter tensors in the model {missing[:4]}")
    check("keys: none unexpected in the file", not unexpected, f"{len(saved)} tensors in the file {unexpected[:4]}")
    common = sorted(set(saved) & set(loaded))
    mismatched = [k for k in common if saved[k].shape != loaded[k].shape or not torch.equal(saved[k], loaded[k])]
    check("weights: PEFT's equal the file's", not mismatched, f"{len(mismatched)} differ {mismatched[:4]}")
    zero_b = [k for k, v in saved.items() if "lora_B" in k and not v.abs().max() > 0]
    check("weights: every lora_B non-zero", not zero_b, f"{len(zero_b)} zero lora_B")

    if logits_path is None:
        print("no polarity logits given: skipped the logits comparison")
    else:
        reference = load_file(logits_path)
        input_ids, attention_mask = reference["input_ids"].long(), reference["attention_mask"].long()
        print(f"inputs: {list(input_ids.shape)}, real tokens per row {attention_mask.sum(dim=1).tolist()}")
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            with model.disable_adapter():
                base_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        theirs = reference["logits"]
        same_shape = tuple(logits.shape) == tuple(theirs.shape)
        check("logits: shape", same_shape, f"{list(logits.shape)} vs {list(theirs.shape)}")
        if same_shape:
            err = max_abs_err(logits, theirs)
            err_real = max_abs_err(logits, theirs, attention_mask)
            detail = f"max_abs_err {err:.3e} (real tokens {err_real:.3e})"
            check("logits with adapter (PEFT vs polarity)", err <= args.tolerance, detail)
            effect = max_abs_err(logits, base_logits)
            print(f"{'adapter effect on logits (PEFT)':40s} max |with - without| = {effect:.4f}")
            if "base_logits" in reference:
                err = max_abs_err(base_logits, reference["base_logits"])
                check("logits without adapter (base)", err <= args.tolerance, f"max_abs_err {err:.3e}")

    if failures:
        print(f"FAILED: {', '.join(failures)}")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
