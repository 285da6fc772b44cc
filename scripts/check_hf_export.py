#!/usr/bin/env python3
"""Check that a sequence classifier exported by polarity loads in transformers unchanged.

Loads EXPORT_DIR with AutoTokenizer / AutoModelForSequenceClassification (no polarity code involved),
runs it in eval mode on a few IMDB-like reviews, and writes a reference fixture of kind
`encoder-sequence-classification` (input ids, masks, labels, logits, loss, classifier gradients). Then
polarity's own check compares its logits on the same directory with transformers':

    /tmp/venv/bin/python scripts/check_hf_export.py EXPORT_DIR FIXTURE_DIR
    cargo run --release --example verify_reference -- FIXTURE_DIR --model EXPORT_DIR

Needs torch, transformers and safetensors (a venv outside the repository is fine).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer
import transformers

REVIEWS = [
    ("A quiet, moving film with a wonderful lead performance. I loved every minute.", 1),
    ("Two hours I will never get back. The plot is a mess and the acting is wooden.", 0),
    ("Not bad, not great: the first half drags but the ending almost makes up for it.", 1),
    ("This is one of the worst movies I have ever seen.<br /><br />Avoid it.", 0),
]


def main(export_dir: str, fixture_dir: str) -> None:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForSequenceClassification.from_pretrained(export_dir)
    model.eval()
    # Reference semantics: no dropout, as in the shipped fixtures.
    texts = [text for text, _ in REVIEWS]
    labels = torch.tensor([label for _, label in REVIEWS])
    batch = tokenizer(texts, padding="longest", truncation=True, max_length=64, return_tensors="pt")
    out = model(**batch, labels=labels)
    out.loss.backward()
    tensors = {
        "input_ids": batch["input_ids"].to(torch.int64),
        "attention_mask": batch["attention_mask"].to(torch.int64),
        "labels": labels.to(torch.int64),
        "logits": out.logits.detach().float(),
        "loss": out.loss.detach().float().reshape(1),
    }
    if "token_type_ids" in batch:
        tensors["token_type_ids"] = batch["token_type_ids"].to(torch.int64)
    for name, parameter in model.named_parameters():
        if name.startswith("classifier.") and parameter.grad is not None:
            tensors[f"grad.{name}"] = parameter.grad.detach().float().contiguous()
    os.makedirs(fixture_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(fixture_dir, "reference.safetensors"))
    meta = {
        "kind": "encoder-sequence-classification",
        "architecture": type(model).__name__,
        "model_dir": os.path.abspath(export_dir),
        "model": f"{export_dir} as exported by polarity, loaded by transformers {transformers.__version__}",
        "note": "logits in eval semantics; loss = mean cross-entropy; grad.* for the classifier only",
        "id2label": model.config.id2label,
        "generated_by": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    with open(os.path.join(fixture_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    print(f"transformers loaded {export_dir} as {type(model).__name__} "
          f"(id2label {model.config.id2label}); logits {out.logits.tolist()}")
    print(f"wrote {fixture_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
