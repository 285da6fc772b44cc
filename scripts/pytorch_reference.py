#!/usr/bin/env python3
"""PyTorch + transformers reference for benches/encoder.rs: the same models, inputs and steps on the CPU.

Measures, with torch.set_num_threads(2) (the development machines have 2 cores):

- forward (inference, eval mode, torch.inference_mode): MiniLM (sentence-transformers/all-MiniLM-L6-v2,
  real weights, fresh 2-class head) at batch 32, sequence 128 and 256; bert-base-uncased and
  distilbert-base-uncased shapes with random weights (transformers' default BertConfig /
  DistilBertConfig are exactly those) at batch 8, sequence 128;
- train_step: MiniLM at batch 16, sequence 256, train mode (dropout on): forward, cross-entropy,
  backward, AdamW step (lr 5e-5, weight decay 0.01, eps 1e-8), zero_grad;
- gemm: a [512, 768] x [768, 768] float32 matmul in torch and numpy, in GFLOP/s.

Inputs are the bench's: IMDB test rows 0..n/2 (negative) and 12500..12500+n/2 (positive), raw text,
tokenized with MiniLM's tokenizer, truncated at the sequence length, padded to the batch's longest.

Setup (outside the repository; PyPI's torch wheel is the CUDA build, it runs on the CPU all the same):

    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install torch transformers pyarrow

Run (assets from the offline hub cache):

    HF_HOME=../shared/hf HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/pytorch_reference.py --json pytorch.json
"""

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import transformers
from huggingface_hub import hf_hub_download
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
IMDB = "stanfordnlp/imdb"
SEED = 42


def imdb_test():
    path = hf_hub_download(IMDB, "plain_text/test-00000-of-00001.parquet", repo_type="dataset")
    table = pq.read_table(path, columns=["text", "label"])
    return table.column("text").to_pylist(), table.column("label").to_pylist()


def review_batch(tokenizer, texts, labels, batch, max_length):
    negatives = len(texts) // 2
    rows = list(range(batch // 2)) + list(range(negatives, negatives + batch - batch // 2))
    encoded = tokenizer(
        [texts[i] for i in rows], truncation=True, max_length=max_length, padding="longest", return_tensors="pt"
    )
    lengths = encoded["attention_mask"].sum(dim=1)
    b, s = encoded["input_ids"].shape
    padding = 100.0 * (b * s - int(lengths.sum())) / (b * s)
    print(
        f"inputs: batch {batch}, truncated at {max_length}: tensors [{b}, {s}], "
        f"token lengths {int(lengths.min())}..={int(lengths.max())}, {padding:.1f}% padding",
        flush=True,
    )
    encoded["labels"] = torch.tensor([labels[i] for i in rows])
    return dict(encoded)


def timed(step, iterations, warmup=1):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def report(results, name, samples, times):
    mean = statistics.mean(times)
    entry = {
        "samples": samples,
        "iterations": len(times),
        "mean_s": mean,
        "min_s": min(times),
        "samples_per_s": samples / mean,
        "samples_per_s_best": samples / min(times),
    }
    results[name] = entry
    print(
        f"{name:40s} {entry['samples_per_s']:8.2f} samples/s  (mean {mean:.3f} s, min {min(times):.3f} s "
        f"over {len(times)} iterations)",
        flush=True,
    )


def bench_forward(results, name, model, batch, iterations):
    model.eval()
    # DistilBERT takes no token_type_ids.
    accepted = {"input_ids", "attention_mask"} | ({"token_type_ids"} if model.config.model_type == "bert" else set())
    inputs = {k: v for k, v in batch.items() if k in accepted}

    def step():
        with torch.inference_mode():
            model(**inputs).logits.numpy()

    report(results, name, batch["input_ids"].shape[0], timed(step, iterations))


def bench_train_step(results, name, model, batch, iterations):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, eps=1e-8)

    def step():
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    report(results, name, batch["input_ids"].shape[0], timed(step, iterations))


def bench_gemm(results, iterations=20):
    m, k, n = 512, 768, 768
    flop = 2 * m * k * n
    a, w = torch.randn(m, k), torch.randn(k, n)
    times = timed(lambda: a @ w, iterations, warmup=3)
    results["gemm/torch/512x768x768"] = {"gflop_per_s": flop / statistics.mean(times) / 1e9}
    a_np, w_np = a.numpy(), w.numpy()
    times = timed(lambda: a_np @ w_np, iterations, warmup=3)
    results["gemm/numpy/512x768x768"] = {"gflop_per_s": flop / statistics.mean(times) / 1e9}
    for key in ("gemm/torch/512x768x768", "gemm/numpy/512x768x768"):
        print(f"{key:40s} {results[key]['gflop_per_s']:8.1f} GFLOP/s", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per measurement")
    parser.add_argument("--skip-random", action="store_true", help="skip the random bert-base / distilbert shapes")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    results = {}
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()}",
        flush=True,
    )
    bench_gemm(results)

    texts, labels = imdb_test()
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    minilm = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    for seq in (128, 256):
        batch = review_batch(tokenizer, texts, labels, 32, seq)
        bench_forward(results, f"forward/minilm/b32_s{seq}", minilm, batch, args.iterations)

    if not args.skip_random:
        batch = review_batch(tokenizer, texts, labels, 8, 128)
        bert = BertForSequenceClassification(BertConfig(num_labels=2))
        bench_forward(results, "forward/bert_base_random/b8_s128", bert, batch, args.iterations)
        del bert
        distilbert = DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
        bench_forward(results, "forward/distilbert_base_random/b8_s128", distilbert, batch, args.iterations)
        del distilbert

    batch = review_batch(tokenizer, texts, labels, 16, 256)
    bench_train_step(results, "train_step/minilm/b16_s256", minilm, batch, args.iterations)

    meta = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
    }
    print(f"load average at end {meta['load_average_at_end']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
