#!/usr/bin/env python3
"""The rows of a `compare` run again with transformers (+ PEFT) on PyTorch, for `compare --reference FILE`.

Reads DIR/report.json (examples/compare.rs) and, for each finished row, trains and measures the same
recipe on the same machine: the same reviews (the row numbers of IMDB's train and test parquet files in
`reviews`, in the row's order), the same settings read from the row's spec (max length, learning rate, batch
size, gradient accumulation, epochs, warmup, AdamW betas/eps/weight decay, gradient-norm clip, seed; LoRA r,
alpha, dropout and targets; the prompt template), and writes polarity's `ReferenceResults` JSON:
`{"tool", "hardware", "rows": {NAME: {"accuracy", "macro_f1", "train_seconds", "train_samples_per_second",
"inference_samples_per_second", "peak_rss_bytes", "note"}}}`.

As polarity does it: encoders are AutoModelForSequenceClassification (2 labels; `init: random` rows
from_config, seeded), reviews truncated at max length, AdamW decaying all but biases and LayerNorm weights;
LoRA rows are AutoModelForCausalLM (a GGUF file through gguf_file=, dequantized to f32) with PEFT LoRA on
polarity's prompt (only the review shortened, BOS first when the tokenizer adds one), the loss on the answer
token only (cross-entropy of " negative"/" positive" at the prompt's last real token), classification by those
two logits. A plain loop: `grad_accum` micro-batches per optimiser step (each loss weighted by its share of
the step's samples), grad-norm clip, HF's linear schedule with warmup, polarity's train order (length-bucketed)
with Python's RNG. Train seconds cover the optimiser steps only. Accuracy and macro-F1 on the row's test
subset for pretrained rows (the best epoch's with several epochs and a best_metric, as polarity picks it on
the test subset when validation_size is 0). Inference: the first `inference.reviews` test reviews,
pre-tokenized and padded per batch, `warmup_batches` untimed batches, `repeats` timed passes, eval mode,
torch.inference_mode. Each row runs in a process of its own (--one-row), so its peak RSS is its own.

Devices: `--device cpu` (default) runs in float32 with `--threads` threads (default: the report's rayon
threads). `--device cuda` runs under bf16 autocast (f16 with loss scaling where the row says f16) and loads
QLoRA rows' base in 4-bit NF4 with bitsandbytes when it is installed (bf16 otherwise, said in the note).
QLoRA rows of a hub checkpoint (Llama-3-8B) are skipped on the CPU with a note; a GGUF file runs dequantized.
On a loaded CPU, keep --threads at or below the idle cores: oversubscribed OpenMP threads run 10x slower.

Setup (outside the repository; PyPI's torch wheel is the CUDA build, it runs on the CPU all the same):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers peft gguf pyarrow
    /tmp/venv/bin/pip install bitsandbytes    # CUDA machines, for 4-bit QLoRA bases

Run (assets from the offline hub cache, from the repository root so the rows' relative GGUF paths resolve):

    HF_HOME=../shared/hf HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/reference_hf.py quick/report.json \\
        --out pytorch.json [--rows all-minilm-l6-v2,distilbert-base-uncased] [--threads 2] [--device cpu|cuda]
    cargo run --release --example compare -- --resume quick --reference pytorch.json
"""

import argparse
import contextlib
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import transformers
from huggingface_hub import hf_hub_download

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_reference import encode_prompt, last_token_logits  # noqa: E402

# The reference setup's ids, which the hub redirects (polarity-hub does too, offline); transformers does not.
HUB_ALIASES = {
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "distilbert-base-uncased": "distilbert/distilbert-base-uncased",
}


class Skip(Exception):
    """A row this machine cannot run; the message becomes its note."""


def imdb_rows(dataset, split, rows):
    path = hf_hub_download(dataset, f"plain_text/{split}-00000-of-00001.parquet", repo_type="dataset")
    table = pq.read_table(path, columns=["text", "label"]).take(rows)  # in the row's order
    return table.column("text").to_pylist(), table.column("label").to_pylist()


def hub_id(model):
    return model if os.path.exists(model) else HUB_ALIASES.get(model, model)


def chunks(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]


def train_batches(order, lengths, batch_size, seed, epoch):
    """polarity_tokenize::TrainOrder::batches, with Python's RNG (so the same kind of order, not the same)."""
    rng = random.Random(seed + epoch)
    index = list(range(len(lengths)))
    if order == "in_order":
        return chunks(index, batch_size)
    rng.shuffle(index)
    if isinstance(order, dict) and "length_bucketed" in order:
        size = batch_size * max(1, order["length_bucketed"]["chunk_batches"])
        batches = []
        for start in range(0, len(index), size):
            batches += chunks(sorted(index[start : start + size], key=lambda i: lengths[i]), batch_size)
        rng.shuffle(batches)
        return batches
    return chunks(index, batch_size)


def lr_at(base, step, warmup, total):
    """polarity_train::LinearWarmupDecay (HF's get_linear_schedule_with_warmup) at 0-based step `step`."""
    if step < warmup:
        return base * step / max(warmup, 1)
    return base * max(0.0, (total - step) / max(total - warmup, 1))


def macro_f1(predictions, labels):
    scores = []
    for c in (0, 1):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        predicted, actual = predictions.count(c), labels.count(c)
        precision, recall = tp / predicted if predicted else 0.0, tp / actual if actual else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / 2


class Encoder:
    """A BERT/DistilBERT classifier, fully fine-tuned."""

    def __init__(self, recipe, device, notes):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        model = hub_id(recipe["model"])
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.max_length, self.device = recipe["max_length"], device
        self.pad = self.tokenizer.pad_token_id or 0
        if recipe.get("init") == "random":
            config = AutoConfig.from_pretrained(model, num_labels=2)
            self.model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
        else:
            self.model = AutoModelForSequenceClassification.from_pretrained(model, num_labels=2, dtype=torch.float32)
        self.model.to(device)
        notes.append(f"{type(self.model).__name__} ({recipe.get('init', 'pretrained')} weights)")

    def encode(self, texts):
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def collate(self, rows):
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad] * (width - len(r)) for r in rows], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
        return {"input_ids": ids, "attention_mask": mask}

    def scores(self, inputs):
        return self.model(**inputs).logits

    def loss(self, inputs, labels):
        return F.cross_entropy(self.scores(inputs).float(), labels)

    def param_groups(self, weight_decay):
        decay, plain = [], []
        for name, param in self.model.named_parameters():
            (plain if "bias" in name or "norm" in name.lower() else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class CausalLmLora:
    """A Llama-architecture causal LM with PEFT LoRA adapters, classifying by the label word."""

    def __init__(self, recipe, device, dtype, notes):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        model, random_init = recipe["model"], recipe.get("init") == "random"
        four_bit = recipe.get("qlora") and device == "cuda" and bitsandbytes_available()
        if model.endswith(".gguf"):
            if not os.path.isfile(model):
                raise Skip(f"{model} not found (run from the folder compare ran in)")
            directory, file = os.path.split(os.path.abspath(model))
            self.tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
            base = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file, dtype=torch.float32)
            notes.append(
                "GGUF dequantized to f32 by transformers" + (" (no 4-bit base)" if recipe.get("qlora") else "")
            )
            base.to(device)
        else:
            model = hub_id(model)
            if recipe.get("qlora") and device != "cuda":
                raise Skip("QLoRA of a hub checkpoint needs bitsandbytes' 4-bit layers on CUDA (--device cuda)")
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            dtype = torch.bfloat16 if recipe.get("qlora") else dtype
            if random_init:
                with torch.device(device):
                    base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model), dtype=dtype)
                if four_bit:
                    quantize_4bit(base)
            else:
                kwargs = {"dtype": dtype}
                if four_bit:
                    kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
                    )
                base = AutoModelForCausalLM.from_pretrained(model, device_map=device, **kwargs)
            notes.append(
                f"{'random' if random_init else 'pretrained'} {type(base).__name__}, base in "
                + ("4-bit NF4 (bitsandbytes)" if four_bit else str(dtype).replace("torch.", ""))
                + (" (bitsandbytes missing)" if recipe.get("qlora") and not four_bit else "")
            )
        lora = recipe["lora"]
        config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["lora_alpha"],
            lora_dropout=lora.get("lora_dropout", 0.0),
            target_modules=lora.get("target_modules") or None,
            use_rslora=lora.get("use_rslora", False),
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(base, config)
        self.inner = self.model.get_base_model()
        self.device, self.max_length, self.template = device, recipe["max_length"], recipe["template"]
        label_words = [self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" negative", " positive")]
        if any(len(ids) != 1 for ids in label_words):
            raise Skip(f"the label words are not single tokens: {label_words}")
        self.label_words = torch.tensor([ids[0] for ids in label_words], device=device)
        tok = self.tokenizer
        first = tok("a", add_special_tokens=True)["input_ids"][:1]
        self.bos = [tok.bos_token_id] if tok.bos_token_id is not None and first == [tok.bos_token_id] else []
        self.pad = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)

    def encode(self, texts):
        budget = self.max_length - len(self.bos)
        return [self.bos + encode_prompt(self.tokenizer, t, budget, self.template) for t in texts]

    collate = Encoder.collate

    def next_token_logits(self, inputs):
        return last_token_logits(self.inner, inputs).float()

    def scores(self, inputs):
        return self.next_token_logits(inputs)[:, self.label_words]

    def loss(self, inputs, labels):
        return F.cross_entropy(self.next_token_logits(inputs), self.label_words[labels])

    def param_groups(self, weight_decay):
        # Adapters only; their names hold neither `bias` nor `norm`, so all of them are decayed, as in polarity.
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "weight_decay": weight_decay}]


def bitsandbytes_available():
    try:
        import bitsandbytes  # noqa: F401

        return True
    except ImportError:
        return False


def quantize_4bit(model):
    """Every nn.Linear but the LM head as bitsandbytes' NF4 Linear4bit (bf16 compute), in place."""
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                layer = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.bfloat16,
                    quant_type="nf4",
                    device="meta",
                )
                # Params4bit quantizes when moved to the GPU (the data is already there).
                layer.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, quant_type="nf4", module=layer
                ).to(child.weight.device)
                if child.bias is not None:
                    layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, layer)
    model.is_loaded_in_4bit = True
    torch.cuda.empty_cache()


def run_row(row, device, threads):
    """One row's numbers (the child process's side)."""
    spec, notes = row["spec"], []
    recipe, trainer, inference = spec["recipe"], spec["recipe"]["trainer"], spec["inference"]
    cuda = device == "cuda"
    torch.set_num_threads(threads)
    torch.manual_seed(trainer["seed"])
    precision = trainer.get("precision", "f32")
    half = (torch.float16 if precision == "f16" else torch.bfloat16) if cuda else None
    autocast = (lambda: torch.autocast("cuda", dtype=half)) if cuda else contextlib.nullcontext
    scaler = torch.amp.GradScaler(
        "cuda", init_scale=trainer.get("initial_loss_scale", 65536.0), enabled=half == torch.float16
    )
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    if recipe["kind"] == "encoder":
        task = Encoder(recipe, device, notes)
    else:
        task = CausalLmLora(recipe, device, torch.float32, notes)
    notes.append(f"{device}, " + (f"{str(half).replace('torch.', '')} autocast" if cuda else f"f32, {threads} threads"))
    dataset = spec["data"]["dataset"]
    train_texts, train_labels = imdb_rows(dataset, "train", row["reviews"]["train"]["rows"])
    test_texts, test_labels = imdb_rows(dataset, "test", row["reviews"]["test"]["rows"])
    train_ids, test_ids = task.encode(train_texts), task.encode(test_texts)

    batch_size, accum, epochs = trainer["batch_size"], trainer["grad_accum"], trainer["epochs"]
    total = math.ceil(math.ceil(len(train_ids) / batch_size) / accum) * epochs  # a partial last step counts
    warmup = trainer["warmup"]
    warmup = min(total, warmup["steps"] if "steps" in warmup else math.ceil(total * warmup["ratio"]))
    optimizer = torch.optim.AdamW(
        task.param_groups(trainer["weight_decay"]),
        lr=0.0,
        betas=(trainer["beta1"], trainer["beta2"]),
        eps=trainer["epsilon"],
    )
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    pretrained = row["init"] != "random"
    per_epoch_eval = pretrained and epochs > 1 and trainer.get("best_metric") and not spec["data"]["validation_size"]

    def evaluate():
        task.model.eval()
        predictions = []
        with torch.inference_mode(), autocast():
            for rows in chunks(test_ids, trainer["eval_batch_size"]):
                predictions += task.scores(task.collate(rows)).argmax(dim=1).tolist()
        correct = sum(p == y for p, y in zip(predictions, test_labels))
        return correct / len(test_labels), macro_f1(predictions, test_labels)

    train_seconds, samples, step, best = 0.0, 0, 0, None
    lengths = [len(ids) for ids in train_ids]
    for epoch in range(epochs):
        task.model.train()
        for step_batches in chunks(
            train_batches(trainer["train_order"], lengths, batch_size, trainer["seed"], epoch), accum
        ):
            sync()
            started = time.perf_counter()
            step_samples = sum(len(b) for b in step_batches)
            for indices in step_batches:
                inputs = task.collate([train_ids[i] for i in indices])
                labels = torch.tensor([train_labels[i] for i in indices], device=device)
                with autocast():
                    loss = task.loss(inputs, labels)
                share = len(indices) / step_samples if len(step_batches) > 1 else 1.0
                scaler.scale(loss * share).backward()
            scaler.unscale_(optimizer)
            if trainer.get("max_grad_norm") is not None:
                torch.nn.utils.clip_grad_norm_(trainable, trainer["max_grad_norm"])
            for group in optimizer.param_groups:
                group["lr"] = lr_at(trainer["learning_rate"], step, warmup, total)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            sync()
            train_seconds += time.perf_counter() - started
            samples += step_samples
            step += 1
        print(f"{spec['name']}: epoch {epoch + 1}/{epochs}: {samples} samples in {train_seconds:.1f} s", flush=True)
        if per_epoch_eval:
            result = evaluate()
            best = result if best is None or result[0] > best[0] else best

    out = {"train_seconds": train_seconds, "train_samples_per_second": samples / train_seconds}
    if pretrained:
        out["accuracy"], out["macro_f1"] = best if best else evaluate()

    bench = [task.collate(rows) for rows in chunks(test_ids[: inference["reviews"]], inference["batch_size"])]
    task.model.eval()
    with torch.inference_mode(), autocast():
        for i in range(inference["warmup_batches"]):
            task.scores(bench[i % len(bench)]).cpu()
        sync()
        started = time.perf_counter()
        for _ in range(inference["repeats"]):
            for inputs in bench:
                task.scores(inputs).cpu()
        sync()
    out["inference_samples_per_second"] = inference["reviews"] * inference["repeats"] / (time.perf_counter() - started)
    out["peak_rss_bytes"] = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if cuda:
        notes.append(f"peak GPU memory {torch.cuda.max_memory_allocated() / 1e9:.1f} GB")
    notes.append("train order reseeded in Python")
    out["note"] = "; ".join(notes)
    return out


def hardware(device, threads):
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    record = {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "gpu_name": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system().lower()} {platform.machine()}",
        "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with contextlib.suppress(ImportError):
        import peft

        record["peft"] = peft.__version__
    return record


def run_in_child(args, name, threads):
    """The row in a process of its own (its peak RSS is its own); a crash becomes the row's note."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "row.json")
        command = [
            sys.executable,
            os.path.abspath(__file__),
            args.report,
            "--one-row",
            name,
            "--row-out",
            result,
            "--threads",
            str(threads),
            "--device",
            args.device,
        ]
        status = subprocess.run(command, check=False).returncode
        if os.path.exists(result):
            with open(result) as f:
                return json.load(f)
        return {"note": f"the row's process ended with status {status} without a result"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", help="a compare run's report.json")
    parser.add_argument("--out", default="pytorch.json", help="the ReferenceResults JSON to write")
    parser.add_argument("--rows", type=lambda s: s.split(","), help="only these rows (comma-separated names)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the report's rayon threads)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--one-row", help=argparse.SUPPRESS)
    parser.add_argument("--row-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    with open(args.report) as f:
        report = json.load(f)
    finished = {row["spec"]["name"]: row for row in report["rows"] if row.get("status") == "finished"}
    threads = args.threads or report.get("hardware", {}).get("rayon_threads") or os.cpu_count()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA device")

    if args.one_row:
        try:
            result = run_row(finished[args.one_row], args.device, threads)
        except Skip as skip:
            result = {"note": f"not run: {skip}"}
        except Exception as error:  # the row's note, not the whole run's end
            result = {"note": f"failed: {type(error).__name__}: {error}"}
            print(f"{args.one_row}: {result['note']}", file=sys.stderr, flush=True)
        with open(args.row_out, "w") as f:
            json.dump(result, f)
        return

    names = args.rows or list(finished)
    unknown = [name for name in names if name not in finished]
    if unknown:
        sys.exit(f"not finished rows of {args.report}: {', '.join(unknown)} (finished: {', '.join(finished)})")
    rows = {}
    for name in names:
        print(f"== {name}", flush=True)
        rows[name] = run_in_child(args, name, threads)
        print(f"{name}: {json.dumps(rows[name])}", flush=True)
    record = hardware(args.device, threads)
    peft_version = f" / peft {record['peft']}" if "peft" in record else ""
    tool = (
        f"transformers {transformers.__version__} / torch {torch.__version__}{peft_version}, "
        f"{args.device}, {threads} threads"
    )
    with open(args.out, "w") as f:
        json.dump({"tool": tool, "hardware": record, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
