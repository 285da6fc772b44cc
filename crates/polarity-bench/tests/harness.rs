//! The harness on tiny models: counts, warm-up, throughput, generation, the hardware record, JSON.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use polarity_bench::{
    BenchError, GenerationMeasurement, HardwareRecord, InferenceBench, InferenceMeasurement, MeasuredPath, Workload,
};
use polarity_core::{ClassScorer, Precision, Sentiment, TokenBatch};
use polarity_llama::{LlamaConfig, LlamaTokenizer};
use polarity_tokenize::{Encode, TokenIds, TokenizeError, TokenizedExample};
use polarity_train::{CrossEntropyObjective, TextClassifier};

type B = NdArray<f32>;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");

/// Mean of token embeddings, then a linear layer (polarity-train's doc model).
#[derive(Module, Debug)]
struct Bag<B: Backend> {
    embedding: Embedding<B>,
    head: Linear<B>,
}

impl<B: Backend> ClassScorer<B> for Bag<B> {
    fn class_scores(&self, batch: TokenBatch<B>) -> Tensor<B, 2> {
        let mask = batch.attention_mask.float().unsqueeze_dim::<3>(2);
        let summed = (self.embedding.forward(batch.input_ids) * mask.clone()).sum_dim(1).squeeze_dim::<2>(1);
        self.head.forward(summed / mask.sum_dim(1).squeeze_dim::<2>(1))
    }
}

fn bag(device: &burn::tensor::Device<B>) -> Bag<B> {
    Bag { embedding: EmbeddingConfig::new(32, 8).init(device), head: LinearConfig::new(8, 2).init(device) }
}

/// 20 examples of 3 to 7 tokens (100 tokens in all).
fn examples() -> Vec<TokenizedExample> {
    (0..20)
        .map(|i| TokenizedExample {
            tokens: TokenIds::new((0..3 + i % 5).map(|t| 1 + (i + t) as u32 % 30).collect()),
            label: Sentiment::ALL[i % 2],
        })
        .collect()
}

/// Whitespace tokenizer over a toy vocabulary: each word's length (at most 31) is its id.
#[derive(Clone, Debug)]
struct WordLengths;

impl Encode for WordLengths {
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<TokenIds>, TokenizeError> {
        Ok(texts
            .iter()
            .map(|text| TokenIds::new(text.split_whitespace().map(|w| w.len().min(31) as u32).collect()))
            .collect())
    }

    fn pad_id(&self) -> u32 {
        0
    }
}

/// `value` survives JSON and back, every field (serde_json may read a float back one bit off without
/// its `float_roundtrip` feature, so the parsed value is compared with the JSON text read as a value).
fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_string(value).unwrap();
    let parsed: T = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_value(&parsed).unwrap(), serde_json::from_str::<serde_json::Value>(&json).unwrap());
}

#[test]
fn measure_scorer_counts_every_sample_and_token_once() {
    let device = Default::default();
    let model = bag(&device);
    let data = examples();
    let tokens: usize = data.iter().map(|item| item.tokens.len()).sum();
    assert_eq!(tokens, 100);

    let bench = InferenceBench::new(8).with_warmup_batches(3).with_repeats(2);
    let measurement = bench.measure_scorer(&CrossEntropyObjective::new(0), &model, &data, &device).unwrap();
    assert_eq!(measurement.path, MeasuredPath::ClassScores);
    assert!(!measurement.tokenization_included);
    assert_eq!((measurement.samples, measurement.tokens, measurement.batches), (20, Some(100), 3));
    // Batches of 8, 8, 4 padded to their longest row (7, 7, 7 tokens).
    assert_eq!(measurement.padded_tokens, Some(8 * 7 + 8 * 7 + 4 * 7));
    // Warm-up batches are not timed: 3 batches x 2 passes.
    assert_eq!(measurement.latency.count, 6);
    assert_eq!((measurement.warmup_batches, measurement.repeats), (3, 2));
    assert_eq!(measurement.pass_seconds.len(), 2);
    assert!(measurement.total_seconds > 0.0);
    let rates = measurement.throughput;
    assert!(rates.samples_per_second > 0.0 && rates.tokens_per_second.unwrap() > 0.0);
    assert!((rates.samples_per_second * measurement.total_seconds - 40.0).abs() < 1e-6);
    assert!(measurement.latency.min_ms <= measurement.latency.p50_ms);
    assert!(measurement.latency.p99_ms <= measurement.latency.max_ms);
    if cfg!(target_os = "linux") {
        assert!(measurement.peak_rss_bytes.unwrap() > 0);
    }
    println!("{measurement}");

    round_trips::<InferenceMeasurement>(&measurement);
}

#[test]
fn bad_settings_and_empty_inputs_are_errors() {
    let device = Default::default();
    let model = bag(&device);
    let objective = CrossEntropyObjective::new(0);
    let data = examples();
    let zero_batch = InferenceBench::new(0);
    assert!(matches!(
        zero_batch.measure_scorer(&objective, &model, &data, &device),
        Err(BenchError::InvalidSetting { field: "batch_size", .. })
    ));
    let zero_repeats = InferenceBench::new(4).with_repeats(0);
    assert!(matches!(zero_repeats.validate(), Err(BenchError::InvalidSetting { field: "repeats", .. })));
    assert!(matches!(
        InferenceBench::new(4).measure_scorer(&objective, &model, &[], &device),
        Err(BenchError::EmptyInput { .. })
    ));
    // A model error surfaces as an error, not a panic.
    let mut broken = data.clone();
    broken[5].tokens = TokenIds::new(Vec::new());
    assert!(matches!(
        InferenceBench::new(4).measure_scorer(&objective, &model, &broken, &device),
        Err(BenchError::Train(_))
    ));
}

#[test]
fn measure_classifier_includes_tokenization() {
    let device = Default::default();
    let classifier = TextClassifier::<B, _, _, _> {
        model: bag(&device),
        tokenizer: WordLengths,
        scorer: CrossEntropyObjective::new(0),
        device,
        batch_size: 4,
    };
    let texts: Vec<String> = (0..10).map(|i| format!("review number {i} was {}", "good ".repeat(i))).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let measurement = InferenceBench::new(4).with_warmup_batches(0).measure_classifier(&classifier, &texts).unwrap();
    assert_eq!(measurement.path, MeasuredPath::Classifier);
    assert!(measurement.tokenization_included);
    assert_eq!((measurement.samples, measurement.batches, measurement.latency.count), (10, 3, 3));
    assert_eq!(measurement.tokens, None);
    let tokens: usize = WordLengths.token_lengths(&texts).unwrap().iter().sum();
    let measurement = measurement.with_tokens(tokens);
    assert!(measurement.throughput.tokens_per_second.unwrap() > 0.0);
    assert!(matches!(InferenceBench::new(4).measure_classifier(&classifier, &[]), Err(BenchError::EmptyInput { .. })));
}

#[test]
fn measure_generation_parses_and_counts_answers() {
    let gguf = PathBuf::from(SHARED).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!("skipped: {} is absent", gguf.display());
        return;
    }
    // A random tiny Llama (vocab 512) speaking through SmolLM2's tokenizer: its answers are noise, which
    // is what the unparseable count is for.
    let tokenizer = LlamaTokenizer::from_gguf(&polarity_llama::gguf::GgufFile::open(&gguf).unwrap()).unwrap();
    let config =
        LlamaConfig::from_hf_file(&PathBuf::from(SHARED).join("fixtures/tiny-llama/model/config.json")).unwrap();
    let device = Default::default();
    B::seed(&device, 42);
    let model = config.init::<B>(&device).unwrap();
    let data: Vec<TokenizedExample> = (0..6)
        .map(|i| TokenizedExample {
            tokens: TokenIds::new((0..10).map(|t| 20 + (i * 7 + t) % 400).collect()),
            label: Sentiment::ALL[i as usize % 2],
        })
        .collect();

    let bench = InferenceBench::new(1).with_warmup_batches(1).with_repeats(2);
    let generation = bench.measure_generation(&model, &tokenizer, &data, 4, &device).unwrap();
    let measurement = &generation.measurement;
    assert_eq!(measurement.path, MeasuredPath::Generation);
    assert_eq!((measurement.samples, measurement.tokens, measurement.batches), (6, Some(60), 6));
    assert_eq!(measurement.latency.count, 12);
    // Scored once (the first measured pass), every prompt counted.
    assert_eq!(generation.report.total, 6);
    assert!(generation.unparseable <= 6);
    assert_eq!(generation.max_new_tokens, 4);
    println!("{generation}");
    round_trips::<GenerationMeasurement>(&generation);

    assert!(matches!(
        bench.measure_generation(&model, &tokenizer, &data, 0, &device),
        Err(BenchError::InvalidSetting { field: "max_new_tokens", .. })
    ));
}

#[test]
fn the_hardware_record_is_sensible() {
    let record = HardwareRecord::detect("ndarray (cpu)", Precision::Bf16);
    assert!(record.logical_cores >= 1 && record.rayon_threads >= 1);
    assert_eq!(record.precision, Precision::Bf16);
    assert_eq!(record.backend, "ndarray (cpu)");
    assert!(!record.git_commit.is_empty());
    assert!(record.rustc_version.starts_with("rustc ") || record.rustc_version == "unknown");
    if cfg!(target_os = "linux") {
        assert!(record.cpu_model.is_some());
    }
    if !cfg!(feature = "cuda") {
        assert_eq!(record.gpu_name, None);
    }
    // burn's version is the one Cargo.lock pins.
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
    let burn = lock.split("[[package]]").find(|package| package.contains("\nname = \"burn\"\n")).unwrap();
    let version = burn.lines().find_map(|line| line.strip_prefix("version = ")).unwrap().trim_matches('"');
    assert!(!record.burn_version.is_empty());
    assert_eq!(record.burn_version, version);

    let text = record.to_string();
    println!("{text}");
    assert!(text.lines().count() == 2 && text.contains(&record.burn_version), "{text}");
    let json = serde_json::to_string(&record).unwrap();
    assert_eq!(serde_json::from_str::<HardwareRecord>(&json).unwrap(), record);
}

#[test]
fn the_encoder_reference_draws_500_balanced_test_reviews() {
    let workload = Workload::encoder_reference();
    let selection = match workload.draw() {
        Ok(selection) => selection,
        Err(error) => {
            eprintln!("skipped: IMDB is not in the hub cache ({error}); set HF_HOME=../shared/hf HF_HUB_OFFLINE=1");
            return;
        }
    };
    assert_eq!(selection.len(), 500);
    assert_eq!(selection.reviews.label_counts(), [250, 250]);
    // The same reviews as the recipes' test subset of 500 (seed 42).
    let split = polarity_data::hub::load_split(&workload.dataset, workload.split).unwrap();
    assert_eq!(selection.examples(), split.balanced_subset(500, 42).unwrap().examples());
    for (row, example) in selection.rows().iter().zip(selection.examples()) {
        assert_eq!(&split.examples()[*row], example);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids/encoder-reference.json");
    selection.ids.write_json(&path).unwrap();
    let ids: polarity_bench::ReviewIds = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(ids, selection.ids);
    assert_eq!(ids.source, "stanfordnlp/imdb:test");
}
