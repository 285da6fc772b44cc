#!/usr/bin/env python3
"""PyTorch + transformers reference for benches/encoder.rs and (--llama) benches/llama.rs, on the CPU.

The same models, inputs and steps as the benches.

By default it measures the encoder workloads, with torch.set_num_threads(2) (the machines have 2 cores):

- forward (inference, eval mode, torch.inference_mode): MiniLM (sentence-transformers/all-MiniLM-L6-v2,
  real weights, fresh 2-class head) at batch 32, sequence 128, 256 and 512; bert-base-uncased and
  distilbert-base-uncased shapes with random weights (transformers' default BertConfig /
  DistilBertConfig are exactly those) at batch 8, sequence 128;
- with --bf16, MiniLM at 256 and the two random shapes again under torch.autocast("cpu", dtype=torch.bfloat16)
  (bf16 products, float32 weights; oneDNN's AVX512-BF16 / AMX kernels where the CPU has them), forward and
  training steps;
- train_step: MiniLM at batch 16, sequence 256, train mode (dropout on): forward, cross-entropy,
  backward, AdamW step (lr 5e-5, weight decay 0.01, eps 1e-8), zero_grad;
- gemm: a [512, 768] x [768, 768] float32 matmul in torch and numpy, in GFLOP/s.

Inputs are the bench's: IMDB test rows 0..n/2 (negative) and 12500..12500+n/2 (positive), raw text,
tokenized with MiniLM's tokenizer, truncated at the sequence length, padded to the batch's longest.

With --llama it measures benches/llama.rs's workloads instead (float32, same thread count), printing
samples/s and tokens/s (batch x sequence length, padding included):

- forward (label-word scoring as polarity does it: the decoder on every token, the LM head on each row's
  last real token only, torch.inference_mode): SmolLM2-135M-Instruct from the GGUF file (transformers
  dequantizes it to float32; needs the `gguf` package) on IMDB prompts (polarity's prompt template, the
  review shortened so the prompt fits) at batch 8 and at most 128 tokens, and at batch 8 and at most 512
  tokens padded to the longest prompt (real IMDB prompt lengths); the tiny-llama fixture's configuration
  (random weights) at batch 8, sequence 128; Meta-Llama-3-8B-Instruct's configuration cut to one layer
  (random weights, about 5 GB) at batch 1, sequence 128 (--skip-8b leaves it out);
- lora_train_step: PEFT LoRA (r 16, alpha 32, dropout 0.05, q_proj + v_proj), train mode: last-token
  logits, cross-entropy against the label-word ids, backward, AdamW step (lr 2e-4, weight decay 0.01,
  eps 1e-8) over the adapter weights, zero_grad; SmolLM2 and the tiny shape at batch 4, sequence 128;
- with --bf16, SmolLM2's scoring at batch 8 x 128 and its LoRA step again with the forward pass under
  torch.autocast("cpu", dtype=torch.bfloat16) (benches/llama.rs's flex-bf16 lines).

The tiny and 8B shapes take the bench's deterministic pseudo-random token ids (xorshift64, seed 42).

Setup (outside the repository; PyPI's torch wheel is the CUDA build, it runs on the CPU all the same):

    python3 -m venv /tmp/venv
    /tmp/venv/bin/pip install torch transformers pyarrow
    /tmp/venv/bin/pip install peft gguf    # for --llama

Run (assets from the offline hub cache):

    HF_HOME=../shared/hf HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/pytorch_reference.py --json pytorch.json
    HF_HOME=../shared/hf HF_HUB_OFFLINE=1 /tmp/venv/bin/python scripts/pytorch_reference.py --llama \
        --json pytorch-llama.json
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
SMOLLM2_GGUF = "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAMA_MODEL = "../shared/fixtures/tiny-llama/model"
# polarity_tokenize::prompt::DEFAULT_TEMPLATE
PROMPT_TEMPLATE = (
    "You are a sentiment analysis assistant.\nClassify the following IMDB movie review as positive or negative."
    "\n\nReview:\n{text}\n\nAnswer (positive or negative):"
)
# benches/llama.rs: the tiny model's stand-in label words.
TINY_LABEL_WORDS = (5, 6)


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


def bench_forward(results, name, model, batch, iterations, bf16=False):
    """Times inference; with bf16, under torch.autocast("cpu", dtype=torch.bfloat16) (the weights stay float32)."""
    model.eval()
    # DistilBERT takes no token_type_ids.
    accepted = {"input_ids", "attention_mask"} | ({"token_type_ids"} if model.config.model_type == "bert" else set())
    inputs = {k: v for k, v in batch.items() if k in accepted}

    def step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(**inputs).logits.float().numpy()

    report(results, name, batch["input_ids"].shape[0], timed(step, iterations))


def bench_train_step(results, name, model, batch, iterations, bf16_name=None):
    """Times training steps; with bf16_name, also steps whose forward pass runs under
    torch.autocast("cpu", dtype=torch.bfloat16) (HF Trainer's bf16=True)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, eps=1e-8)

    def step(bf16=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    report(results, name, batch["input_ids"].shape[0], timed(step, iterations))
    if bf16_name:
        report(results, bf16_name, batch["input_ids"].shape[0], timed(lambda: step(bf16=True), iterations))


def report_tokens(results, name, batch, seq, times):
    report(results, name, batch, times)
    entry = results[name]
    entry["seq"] = seq
    entry["tokens"] = batch * seq
    entry["tokens_per_s"] = batch * seq / entry["mean_s"]
    entry["tokens_per_s_best"] = batch * seq / entry["min_s"]
    print(f"{'':40s} {entry['tokens_per_s']:8.1f} tokens/s  ([{batch}, {seq}])", flush=True)


def encode_prompt(tokenizer, review, max_length, template=PROMPT_TEMPLATE):
    """polarity_tokenize::PromptTemplate::encode: shorten the review (at a token boundary, from the end)
    until the whole prompt fits in max_length tokens; never cut the instruction or the answer cue.
    `template` has `{text}` where the review goes (replaced once, as polarity renders it)."""

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(text):
        return template.replace("{text}", text, 1)

    whole = encode(render(review))
    if len(whole) <= max_length:
        return whole
    template_tokens = len(encode(render("")))
    offsets = tokenizer(review, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    budget = min(max_length - template_tokens, len(offsets))
    while budget > 0:
        ids = encode(render(review[: offsets[budget - 1][1]]))
        if len(ids) <= max_length:
            return ids
        budget -= 1
    raise ValueError(f"the template alone needs {template_tokens} tokens, more than {max_length}")


def prompt_batch(tokenizer, texts, labels, batch, max_length):
    """IMDB prompts (the bench's rows), right-padded with 0 to the longest; their labels."""
    negatives = len(texts) // 2
    rows = list(range(batch // 2)) + list(range(negatives, negatives + batch - batch // 2))
    prompts = [encode_prompt(tokenizer, texts[i], max_length) for i in rows]
    lengths = [len(p) for p in prompts]
    seq = max(lengths)
    input_ids = torch.tensor([p + [0] * (seq - len(p)) for p in prompts])
    attention_mask = torch.tensor([[1] * len(p) + [0] * (seq - len(p)) for p in prompts])
    padding = 100.0 * (batch * seq - sum(lengths)) / (batch * seq)
    print(
        f"SmolLM2 inputs: {batch} IMDB prompts of at most {max_length} tokens: tensors [{batch}, {seq}], "
        f"prompt lengths {min(lengths)}..={max(lengths)}, {padding:.1f}% padding",
        flush=True,
    )
    return {"input_ids": input_ids, "attention_mask": attention_mask}, [labels[i] for i in rows]


def synthetic_batch(batch, seq, vocab):
    """benches/llama.rs's deterministic ids: xorshift64 from the seed, modulo the vocabulary; no padding."""
    mask64 = (1 << 64) - 1
    state, ids = SEED, []
    for _ in range(batch * seq):
        state ^= (state << 13) & mask64
        state ^= state >> 7
        state ^= (state << 17) & mask64
        ids.append(state % vocab)
    input_ids = torch.tensor(ids).reshape(batch, seq)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def last_token_logits(causal_lm, batch):
    """polarity's Llama::last_token_logits: final hidden states, each row's last real token, LM head."""
    hidden = causal_lm.model(**batch).last_hidden_state
    last = batch["attention_mask"].sum(dim=1) - 1
    return causal_lm.lm_head(hidden[torch.arange(hidden.shape[0]), last])


def bench_llama_forward(results, name, causal_lm, batch, iterations, bf16=False):
    """Times label-word scoring; with bf16, under torch.autocast("cpu", dtype=torch.bfloat16)."""
    causal_lm.eval()

    def step():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            last_token_logits(causal_lm, batch).float().numpy()

    b, s = batch["input_ids"].shape
    report_tokens(results, name, b, s, timed(step, iterations))


def bench_lora_step(results, name, causal_lm, batch, targets, iterations, bf16_name=None):
    """Wraps causal_lm in a PEFT LoRA model (in place) and times training steps; with bf16_name, also
    steps whose forward pass runs under torch.autocast("cpu", dtype=torch.bfloat16) (HF Trainer's bf16=True)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    model = get_peft_model(causal_lm, config)
    model.train()
    inner = model.get_base_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.01, eps=1e-8)
    targets = torch.tensor(targets)

    def step(bf16=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = last_token_logits(inner, batch)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    b, s = batch["input_ids"].shape
    report_tokens(results, name, b, s, timed(step, iterations))
    results[name]["trainable_params"] = sum(p.numel() for p in trainable)
    if bf16_name:
        report_tokens(results, bf16_name, b, s, timed(lambda: step(bf16=True), iterations))


def tiny_llama_config():
    """The tiny-llama fixture's own configuration, as benches/llama.rs reads it."""
    return transformers.LlamaConfig.from_pretrained(TINY_LLAMA_MODEL)


def llama3_8b_one_layer_config():
    """polarity's LlamaConfig::llama3_8b_instruct().with_num_hidden_layers(1) (Llama 3.1's RoPE scaling)."""
    return transformers.LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=1,
        num_attention_heads=32,
        num_key_value_heads=8,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def run_llama(results, args):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    iterations = args.iterations
    if os.path.exists(args.gguf):
        directory, file = os.path.split(os.path.abspath(args.gguf))
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=file)
        smollm2 = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file, dtype=torch.float32)
        print(f"SmolLM2 loaded from {args.gguf} in {time.perf_counter() - start:.1f} s", flush=True)
        label_words = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" negative", " positive")]
        assert all(len(ids) == 1 for ids in label_words), f"label words are not single tokens: {label_words}"
        label_words = [ids[0] for ids in label_words]
        texts, labels = imdb_test()
        batch, _ = prompt_batch(tokenizer, texts, labels, 8, 128)
        bench_llama_forward(results, "forward/smollm2/b8_s128", smollm2, batch, iterations)
        if args.bf16:
            bench_llama_forward(results, "forward/smollm2/bf16/b8_s128", smollm2, batch, iterations, bf16=True)
        if not args.skip_long:
            batch, _ = prompt_batch(tokenizer, texts, labels, 8, 512)
            bench_llama_forward(results, "forward/smollm2/b8_max512", smollm2, batch, iterations)
        batch, rows = prompt_batch(tokenizer, texts, labels, 4, 128)
        targets = [label_words[label] for label in rows]
        bf16_name = "lora_train_step/smollm2/bf16/b4_s128" if args.bf16 else None
        bench_lora_step(results, "lora_train_step/smollm2/b4_s128", smollm2, batch, targets, iterations, bf16_name)
        del smollm2
    else:
        print(f"skipping SmolLM2: {args.gguf} not found", flush=True)

    torch.manual_seed(SEED)
    tiny = LlamaForCausalLM(tiny_llama_config())
    bench_llama_forward(results, "forward/tiny/b8_s128", tiny, synthetic_batch(8, 128, 512), iterations)
    targets = [TINY_LABEL_WORDS[label] for label in (0, 0, 1, 1)]
    bench_lora_step(results, "lora_train_step/tiny/b4_s128", tiny, synthetic_batch(4, 128, 512), targets, iterations)
    del tiny

    if not args.skip_8b:
        config = llama3_8b_one_layer_config()
        start = time.perf_counter()
        big = LlamaForCausalLM(config)
        params = sum(p.numel() for p in big.parameters())
        elapsed = time.perf_counter() - start
        print(f"Llama 3 8B, 1 layer, random: {params} parameters drawn in {elapsed:.1f} s", flush=True)
        batch = synthetic_batch(1, 128, config.vocab_size)
        bench_llama_forward(results, "forward/llama3_8b_1layer_random/b1_s128", big, batch, iterations)
        del big


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


def run_encoders(results, args):
    texts, labels = imdb_test()
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    minilm = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2)
    for seq in (128, 256, 512):
        batch = review_batch(tokenizer, texts, labels, 32, seq)
        bench_forward(results, f"forward/minilm/b32_s{seq}", minilm, batch, args.iterations)
        if args.bf16 and seq == 256:
            bench_forward(results, "forward/minilm/bf16/b32_s256", minilm, batch, args.iterations, bf16=True)

    if not args.skip_random:
        batch = review_batch(tokenizer, texts, labels, 8, 128)
        bert = BertForSequenceClassification(BertConfig(num_labels=2))
        bench_forward(results, "forward/bert_base_random/b8_s128", bert, batch, args.iterations)
        if args.bf16:
            bench_forward(results, "forward/bert_base_random/bf16/b8_s128", bert, batch, args.iterations, bf16=True)
        del bert
        distilbert = DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
        bench_forward(results, "forward/distilbert_base_random/b8_s128", distilbert, batch, args.iterations)
        if args.bf16:
            bench_forward(
                results, "forward/distilbert_base_random/bf16/b8_s128", distilbert, batch, args.iterations, bf16=True
            )
        del distilbert

    if not args.skip_train:
        batch = review_batch(tokenizer, texts, labels, 16, 256)

        def bf16_name(model):
            return f"train_step/{model}/bf16/b16_s256" if args.bf16 else None

        bench_train_step(results, "train_step/minilm/b16_s256", minilm, batch, args.iterations, bf16_name("minilm"))
        if not args.skip_random:
            # The reference models' step at the recipes' batch size (random weights, as in benches/encoder.rs).
            bert = BertForSequenceClassification(BertConfig(num_labels=2))
            bench_train_step(
                results, "train_step/bert_base_random/b16_s256", bert, batch, args.iterations, bf16_name("bert_base_random")
            )
            del bert
            distilbert = DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
            inputs = {k: v for k, v in batch.items() if k != "token_type_ids"}
            bench_train_step(
                results,
                "train_step/distilbert_base_random/b16_s256",
                distilbert,
                inputs,
                args.iterations,
                bf16_name("distilbert_base_random"),
            )
            del distilbert


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per measurement")
    parser.add_argument(
        "--skip-random", action="store_true", help="skip the random bert-base / distilbert shapes (forward and training)"
    )
    parser.add_argument("--skip-train", action="store_true", help="skip the MiniLM training step")
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time MiniLM at 256 and the random BERT-base / DistilBERT forward and training steps under bf16 "
        "autocast, or with --llama SmolLM2's scoring and LoRA step (the benches' flex-bf16 lines)",
    )
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--llama", action="store_true", help="measure benches/llama.rs's workloads instead")
    parser.add_argument("--gguf", default=SMOLLM2_GGUF, help=f"--llama: SmolLM2's GGUF file (default {SMOLLM2_GGUF})")
    parser.add_argument("--skip-long", action="store_true", help="--llama: skip SmolLM2 at real prompt lengths")
    parser.add_argument("--skip-8b", action="store_true", help="--llama: skip the one-layer Llama 3 8B shape")
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

    if args.llama:
        run_llama(results, args)
    else:
        run_encoders(results, args)

    meta = {
        "mode": "llama" if args.llama else "encoder",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_at_end": os.getloadavg(),
    }
    if args.llama:
        import peft

        meta["peft"] = peft.__version__
    print(f"load average at end {meta['load_average_at_end']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
