//! What a comparison runs: rows (a recipe, its data, its inference benchmark) and the presets that list them.

use std::path::{Path, PathBuf};

use polarity_core::Precision;
use polarity_finetune::{
    DataConfig, EncoderFineTune, LoraFineTune, REFERENCE_MAX_NEW_TOKENS, RecipeConfig, WeightInit,
};
use polarity_hub::{RepoKind, RepoSource};
use serde::{Deserialize, Serialize};

use crate::BenchError;

/// The reference setup's sizes: what the full-setup estimate extrapolates to.
pub const REFERENCE_TRAIN_REVIEWS: usize = 25_000;
/// Test reviews of the reference setup.
pub const REFERENCE_TEST_REVIEWS: usize = 25_000;

/// How a row's inference speed is measured after training: the first [`reviews`](Self::reviews) of the
/// row's test subset, scored in batches (class scores or label-word scores, tokenization excluded), and for
/// a causal LM optionally also answered by greedy generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceSpec {
    /// Reviews scored (at most the test subset's size).
    pub reviews: usize,
    /// Reviews per forward pass.
    pub batch_size: usize,
    /// Untimed batches first.
    pub warmup_batches: usize,
    /// Timed passes over the reviews.
    pub repeats: usize,
    /// Causal LMs: the generation benchmark, where asked for.
    pub generation: Option<GenerationSpec>,
}

/// Greedy generation of a causal LM's answer, parsed into a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationSpec {
    /// Prompts answered (the first of the inference reviews).
    pub reviews: usize,
    /// Prompts per generation call (the reference: 1).
    pub batch_size: usize,
    /// The most tokens written before the answer is parsed (the reference: 4).
    pub max_new_tokens: usize,
}

impl InferenceSpec {
    /// `reviews` reviews in batches of `batch_size`, one warm-up batch, one timed pass, no generation.
    pub fn new(reviews: usize, batch_size: usize) -> Self {
        Self { reviews, batch_size, warmup_batches: 1, repeats: 1, generation: None }
    }

    /// Sets the warm-up batches.
    pub fn with_warmup_batches(mut self, warmup_batches: usize) -> Self {
        self.warmup_batches = warmup_batches;
        self
    }

    /// Adds the generation benchmark on the first `reviews` prompts (batch 1, at most 4 new tokens).
    pub fn with_generation(mut self, reviews: usize) -> Self {
        self.generation = Some(GenerationSpec { reviews, batch_size: 1, max_new_tokens: REFERENCE_MAX_NEW_TOKENS });
        self
    }
}

/// One row of the comparison: a recipe with every setting, the reviews it trains and tests on, and how its
/// inference is benchmarked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowSpec {
    /// A short unique name (also the file name of the row's result).
    pub name: String,
    /// The recipe: model, weights, tuning and trainer settings.
    pub recipe: RecipeConfig,
    /// The training and test subsets.
    pub data: DataConfig,
    /// The inference benchmark.
    pub inference: InferenceSpec,
}

impl RowSpec {
    /// The model: hub id, directory or GGUF file.
    pub fn model(&self) -> &str {
        match &self.recipe {
            RecipeConfig::Encoder(recipe) => &recipe.model,
            RecipeConfig::Lora(recipe) => &recipe.model,
        }
    }

    /// Where the starting weights come from.
    pub fn init(&self) -> WeightInit {
        match &self.recipe {
            RecipeConfig::Encoder(recipe) => recipe.init,
            RecipeConfig::Lora(recipe) => recipe.init,
        }
    }

    /// Maximum tokens per input (prompt, for a causal LM).
    pub fn max_length(&self) -> usize {
        match &self.recipe {
            RecipeConfig::Encoder(recipe) => recipe.max_length,
            RecipeConfig::Lora(recipe) => recipe.max_length,
        }
    }

    /// Passes over the training subset.
    pub fn epochs(&self) -> usize {
        match &self.recipe {
            RecipeConfig::Encoder(recipe) => recipe.trainer.epochs,
            RecipeConfig::Lora(recipe) => recipe.trainer.epochs,
        }
    }

    /// `encoder classifier` or `causal LM`.
    pub fn model_type(&self) -> &'static str {
        match &self.recipe {
            RecipeConfig::Encoder(_) => "encoder classifier",
            RecipeConfig::Lora(_) => "causal LM",
        }
    }

    /// The tuning method in words, with its hyper-parameters.
    pub fn tuning(&self) -> String {
        match &self.recipe {
            RecipeConfig::Encoder(recipe) => format!(
                "full fine-tune, lr {:e}, batch {}, {} epoch{}",
                recipe.trainer.learning_rate,
                recipe.trainer.batch_size * recipe.trainer.grad_accum,
                recipe.trainer.epochs,
                if recipe.trainer.epochs == 1 { "" } else { "s" }
            ),
            RecipeConfig::Lora(recipe) => format!(
                "{} r {}, alpha {}, dropout {} on {}, lr {:e}, batch {} x {}",
                if recipe.qlora { "QLoRA (4-bit base)" } else { "LoRA" },
                recipe.lora.r,
                recipe.lora.lora_alpha,
                recipe.lora.lora_dropout,
                recipe.lora.target_modules.join(" + "),
                recipe.trainer.learning_rate,
                recipe.trainer.batch_size,
                recipe.trainer.grad_accum
            ),
        }
    }

    /// Whether the row trains and tests at the reference setup's full size (25k train for the reference
    /// number of epochs, 25k test).
    pub fn is_full_size(&self) -> bool {
        self.data.train_size >= REFERENCE_TRAIN_REVIEWS
            && self.data.test_size >= REFERENCE_TEST_REVIEWS
            && self.epochs() >= self.reference_epochs()
    }

    /// Epochs of the reference setup for this row's family: 3 for encoders, 1 for the causal LM.
    pub fn reference_epochs(&self) -> usize {
        match &self.recipe {
            RecipeConfig::Encoder(_) => 3,
            RecipeConfig::Lora(_) => 1,
        }
    }

    /// Checks the row's settings before anything is loaded.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid =
            |field, value: usize, reason| Err(BenchError::InvalidSetting { field, value: value.to_string(), reason });
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(BenchError::InvalidRowName(self.name.clone()));
        }
        if self.inference.reviews == 0 || self.inference.reviews > self.data.test_size {
            return invalid(
                "inference.reviews",
                self.inference.reviews,
                "must be between 1 and the test subset's size",
            );
        }
        if self.inference.batch_size == 0 || self.inference.repeats == 0 {
            return invalid(
                "inference.batch_size",
                self.inference.batch_size,
                "batch size and repeats must be at least 1",
            );
        }
        if let Some(generation) = self.inference.generation
            && (generation.reviews == 0 || generation.reviews > self.inference.reviews || generation.batch_size == 0)
        {
            return invalid(
                "inference.generation.reviews",
                generation.reviews,
                "must be between 1 and the inference reviews",
            );
        }
        Ok(())
    }
}

/// The lists of rows `compare` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// What fits in 30 minutes on a 2-core CPU: real weights for MiniLM-L6 (full fine-tune, BERT
    /// architecture) and SmolLM2-135M-Instruct (QLoRA on its 4-bit GGUF), and the reference models
    /// (BERT-base, DistilBERT, Llama-3-8B-Instruct as QLoRA) at their real shapes with random weights,
    /// asked for by name (`init: random`): their training and inference speed and memory are measured, their
    /// accuracy is not.
    Default,
    /// A few minutes on a 2-core CPU, to try the command: MiniLM-L6 on 256 / 256 reviews at length 128,
    /// SmolLM2-135M QLoRA on 64 / 64 prompts of at most 96 tokens, DistilBERT at its real shape with random
    /// weights.
    Quick,
    /// The reference models at GPU sizes with random weights, for a few minutes on a GPU without the
    /// weights (`scripts/gpu-check.sh`): BERT-base and DistilBERT at length 256, batch 64 (16 optimiser
    /// steps, 2,048 reviews scored), and Llama-3-8B-Instruct as QLoRA (8 prompts of at most 256 tokens,
    /// batch 1 x accumulation 4; 16 prompts scored at batch 8); bf16 products in `cuda` builds.
    Gpu,
    /// Exactly the reference setup, for a GPU machine with the weights (hub access or a filled cache):
    /// 25k/25k reviews, BERT-base and DistilBERT fully fine-tuned (lr 2e-5, batch 16, 3 epochs, best epoch
    /// kept), Llama-3-8B-Instruct QLoRA (r 16, alpha 32, dropout 0.05 on q_proj + v_proj, lr 2e-4, batch 1 x
    /// accumulation 16, 1 epoch); bf16 products in `cuda` builds, f32 on the CPU.
    Reference,
}

/// Settings that shape a preset's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresetOptions {
    /// The folder with SmolLM2's GGUF file (`models/SmolLM2-135M-Instruct.Q4_1.gguf`): `../shared` in this
    /// repository.
    pub shared_dir: PathBuf,
    /// The reference preset's maximum length (256, or 512).
    pub max_length: usize,
    /// The products' type for the reference preset (bf16 on a GPU).
    pub precision: Precision,
}

impl Default for PresetOptions {
    fn default() -> Self {
        let precision = if cfg!(feature = "cuda") { Precision::Bf16 } else { Precision::F32 };
        Self { shared_dir: PathBuf::from("../shared"), max_length: 256, precision }
    }
}

/// The hub id of Meta-Llama-3-8B-Instruct.
pub const LLAMA3_8B_INSTRUCT: &str = "meta-llama/Meta-Llama-3-8B-Instruct";
/// The hub id of BERT-base (uncased); the reference setup's `bert-base-uncased` redirects here.
pub const BERT_BASE_UNCASED: &str = "google-bert/bert-base-uncased";
/// The hub id of DistilBERT (uncased); the reference setup's `distilbert-base-uncased` redirects here.
pub const DISTILBERT_BASE_UNCASED: &str = "distilbert/distilbert-base-uncased";
/// The hub id of the MiniLM-L6 encoder (BERT architecture, 22.7M parameters).
pub const MINILM_L6: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// SmolLM2-135M-Instruct's 4-bit GGUF, relative to the shared folder.
pub const SMOLLM2_GGUF: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

impl Preset {
    /// The preset's rows, in report order.
    pub fn rows(self, options: &PresetOptions) -> Vec<RowSpec> {
        match self {
            Preset::Default => default_rows(options),
            Preset::Quick => quick_rows(options),
            Preset::Gpu => gpu_rows(options),
            Preset::Reference => reference_rows(options),
        }
    }

    /// A row for any supported model (hub id, directory or `.gguf` file) with this preset's settings for its
    /// family: an encoder (config.json `model_type` `bert` or `distilbert`) is fully fine-tuned, a
    /// Llama-architecture causal LM gets QLoRA. `init` says where its weights come from; random weights must
    /// be asked for.
    pub fn row_for_model(self, model: &str, init: WeightInit, options: &PresetOptions) -> Result<RowSpec, BenchError> {
        let family = ModelFamily::detect(model)?;
        let name = row_name(model, family);
        let mut row = match (self, family, init) {
            (Preset::Default, ModelFamily::Encoder, WeightInit::Pretrained) => minilm_like(model),
            (Preset::Quick, ModelFamily::Encoder, WeightInit::Pretrained) => shrink(minilm_like(model), 256, 256, 128),
            (Preset::Default | Preset::Quick, ModelFamily::Encoder, WeightInit::Random) => random_encoder(model),
            (Preset::Default, ModelFamily::CausalLm, WeightInit::Pretrained) => smollm2_like(model),
            (Preset::Quick, ModelFamily::CausalLm, WeightInit::Pretrained) => shrink(smollm2_like(model), 64, 64, 96),
            (Preset::Default | Preset::Quick, ModelFamily::CausalLm, WeightInit::Random) => random_causal_lm(model),
            (Preset::Reference, ModelFamily::Encoder, _) => reference_encoder(model, options),
            (Preset::Reference, ModelFamily::CausalLm, _) => reference_causal_lm(model, options),
            (Preset::Gpu, ModelFamily::Encoder, _) => gpu_encoder(model, options),
            (Preset::Gpu, ModelFamily::CausalLm, _) => gpu_causal_lm(model, options),
        };
        row.name = name;
        set_init(&mut row.recipe, init);
        Ok(row)
    }
}

/// The two kinds of model a row can tune.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamily {
    /// BERT or DistilBERT: full fine-tune with a classification head.
    Encoder,
    /// A Llama-architecture causal LM: LoRA, classifying by the label word.
    CausalLm,
}

impl ModelFamily {
    /// A `.gguf` file is a causal LM; otherwise config.json's `model_type` decides (read from the directory
    /// or the hub cache).
    pub fn detect(model: &str) -> Result<Self, BenchError> {
        if Path::new(model).extension().is_some_and(|ext| ext.eq_ignore_ascii_case("gguf")) {
            return Ok(ModelFamily::CausalLm);
        }
        let unsupported = |reason: String| BenchError::UnsupportedModel { model: model.to_string(), reason };
        let config = RepoSource::parse(model, RepoKind::Model)
            .file("config.json")
            .map_err(|e| unsupported(format!("no config.json: {e}")))?;
        let text = polarity_hub::files::read_regular_to_string_within(&config, 16 << 20)
            .map_err(|e| unsupported(format!("{}: {e}", config.display())))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| unsupported(format!("{}: {e}", config.display())))?;
        match json.get("model_type").and_then(|v| v.as_str()) {
            Some("bert" | "distilbert") => Ok(ModelFamily::Encoder),
            Some("llama") => Ok(ModelFamily::CausalLm),
            Some(other) => Err(unsupported(format!(
                "model_type {other:?} in {} (supported: bert, distilbert, llama)",
                config.display()
            ))),
            None => Err(unsupported(format!("{} has no model_type", config.display()))),
        }
    }
}

/// `org/Name-v2` -> `name-v2`; `dir/SmolLM2-135M-Instruct.Q4_1.gguf` -> `smollm2-135m-instruct-q4_1`; a
/// causal LM's row name ends in `-lora`.
fn row_name(model: &str, family: ModelFamily) -> String {
    let last = model.trim_end_matches('/').rsplit('/').next().unwrap_or(model);
    let stem = last.strip_suffix(".gguf").unwrap_or(last);
    let name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    match family {
        ModelFamily::Encoder => name,
        ModelFamily::CausalLm => format!("{name}-lora"),
    }
}

fn set_init(recipe: &mut RecipeConfig, init: WeightInit) {
    match recipe {
        RecipeConfig::Encoder(recipe) => recipe.init = init,
        RecipeConfig::Lora(recipe) => recipe.init = init,
    }
}

/// A pretrained encoder on the CPU: the README's main job (2,000 / 1,000 reviews, length 256, 1 epoch at
/// lr 5e-5 with 10 % warmup; the reference's 2e-5 over 3 epochs of 25k is a GPU's budget).
fn minilm_like(model: &str) -> RowSpec {
    let mut recipe = EncoderFineTune::new(model);
    recipe.trainer =
        recipe.trainer.with_epochs(1).with_learning_rate(5e-5).with_warmup(polarity_train::Warmup::Ratio(0.1));
    RowSpec {
        name: row_name(model, ModelFamily::Encoder),
        recipe: RecipeConfig::Encoder(recipe),
        data: DataConfig::imdb(2000, 1000),
        inference: InferenceSpec::new(256, 32),
    }
}

/// A pretrained causal LM on the CPU: QLoRA on 500 / 500 reviews in prompts of at most 128 tokens, the
/// reference's LoRA settings otherwise (32 optimiser steps of 16; 20 steps on 320 reviews left SmolLM2
/// answering "negative" to nearly everything), no zero-shot pass.
fn smollm2_like(model: &str) -> RowSpec {
    let recipe = LoraFineTune::new(model).with_qlora(true).with_max_length(128).with_zero_shot(false);
    RowSpec {
        name: row_name(model, ModelFamily::CausalLm),
        recipe: RecipeConfig::Lora(recipe),
        data: DataConfig::imdb(500, 500),
        inference: InferenceSpec::new(64, 8).with_generation(16),
    }
}

/// An encoder at its real shape with random weights: 2 optimiser steps of the reference batch (16) at
/// length 256 for the training speed, 64 test reviews for the inference speed.
fn random_encoder(model: &str) -> RowSpec {
    let mut recipe = EncoderFineTune::new(model).with_init(WeightInit::Random);
    recipe.trainer = recipe.trainer.with_epochs(1);
    RowSpec {
        name: row_name(model, ModelFamily::Encoder),
        recipe: RecipeConfig::Encoder(recipe),
        data: DataConfig::imdb(32, 64),
        inference: InferenceSpec::new(64, 32),
    }
}

/// A causal LM at its real shape with random weights, as QLoRA: 2 training prompts of at most 128 tokens
/// (one optimiser step of 2, batch 1), 2 test prompts scored by the evaluation and again by the timed
/// benchmark (an 8B forward pass takes a minute on 2 cores).
fn random_causal_lm(model: &str) -> RowSpec {
    let mut recipe = LoraFineTune::new(model)
        .with_qlora(true)
        .with_init(WeightInit::Random)
        .with_max_length(128)
        .with_zero_shot(false);
    recipe.trainer = recipe.trainer.with_grad_accum(2).with_eval_batch_size(2);
    RowSpec {
        name: row_name(model, ModelFamily::CausalLm),
        recipe: RecipeConfig::Lora(recipe),
        data: DataConfig::imdb(2, 2),
        inference: InferenceSpec::new(2, 1).with_warmup_batches(0),
    }
}

fn reference_encoder(model: &str, options: &PresetOptions) -> RowSpec {
    let mut recipe = EncoderFineTune::new(model).with_max_length(options.max_length);
    recipe.trainer = recipe.trainer.with_precision(options.precision);
    RowSpec {
        name: row_name(model, ModelFamily::Encoder),
        recipe: RecipeConfig::Encoder(recipe),
        data: DataConfig::imdb_full(),
        inference: InferenceSpec::new(500, 32),
    }
}

fn reference_causal_lm(model: &str, options: &PresetOptions) -> RowSpec {
    let mut recipe = LoraFineTune::new(model).with_qlora(true).with_max_length(options.max_length);
    recipe.trainer = recipe.trainer.with_precision(options.precision);
    RowSpec {
        name: row_name(model, ModelFamily::CausalLm),
        recipe: RecipeConfig::Lora(recipe),
        data: DataConfig::imdb_full(),
        inference: InferenceSpec::new(100, 8).with_generation(100),
    }
}

fn default_rows(options: &PresetOptions) -> Vec<RowSpec> {
    let smollm2 = options.shared_dir.join(SMOLLM2_GGUF).to_string_lossy().into_owned();
    let mut smollm2_row = smollm2_like(&smollm2);
    smollm2_row.name = "smollm2-135m-instruct-lora".into();
    vec![
        minilm_like(MINILM_L6),
        smollm2_row,
        random_encoder(BERT_BASE_UNCASED),
        random_encoder(DISTILBERT_BASE_UNCASED),
        {
            let mut row = random_causal_lm(LLAMA3_8B_INSTRUCT);
            row.name = "meta-llama-3-8b-instruct-qlora".into();
            row
        },
    ]
}

/// `row` on `train` / `test` reviews at `max_length`, its inference benchmark cut to fit.
fn shrink(mut row: RowSpec, train: usize, test: usize, max_length: usize) -> RowSpec {
    row.data.train_size = train;
    row.data.test_size = test;
    match &mut row.recipe {
        RecipeConfig::Encoder(recipe) => recipe.max_length = max_length,
        RecipeConfig::Lora(recipe) => recipe.max_length = max_length,
    }
    row.inference.reviews = row.inference.reviews.min(test);
    if let Some(generation) = &mut row.inference.generation {
        generation.reviews = generation.reviews.min(row.inference.reviews);
    }
    row
}

fn quick_rows(options: &PresetOptions) -> Vec<RowSpec> {
    let smollm2 = options.shared_dir.join(SMOLLM2_GGUF).to_string_lossy().into_owned();
    let mut smollm2_row = shrink(smollm2_like(&smollm2), 64, 64, 96);
    smollm2_row.name = "smollm2-135m-instruct-lora".into();
    vec![shrink(minilm_like(MINILM_L6), 256, 256, 128), smollm2_row, random_encoder(DISTILBERT_BASE_UNCASED)]
}

fn gpu_encoder(model: &str, options: &PresetOptions) -> RowSpec {
    let mut recipe = EncoderFineTune::new(model).with_init(WeightInit::Random);
    recipe.trainer =
        recipe.trainer.with_epochs(1).with_batch_size(64).with_eval_batch_size(256).with_precision(options.precision);
    RowSpec {
        name: row_name(model, ModelFamily::Encoder),
        recipe: RecipeConfig::Encoder(recipe),
        data: DataConfig::imdb(1024, 2048),
        inference: InferenceSpec::new(2048, 256),
    }
}

fn gpu_causal_lm(model: &str, options: &PresetOptions) -> RowSpec {
    let mut recipe = LoraFineTune::new(model).with_qlora(true).with_init(WeightInit::Random).with_zero_shot(false);
    recipe.trainer = recipe.trainer.with_grad_accum(4).with_precision(options.precision);
    RowSpec {
        name: row_name(model, ModelFamily::CausalLm),
        recipe: RecipeConfig::Lora(recipe),
        data: DataConfig::imdb(8, 16),
        inference: InferenceSpec::new(16, 8),
    }
}

fn gpu_rows(options: &PresetOptions) -> Vec<RowSpec> {
    let mut llama = gpu_causal_lm(LLAMA3_8B_INSTRUCT, options);
    llama.name = "meta-llama-3-8b-instruct-qlora".into();
    vec![gpu_encoder(BERT_BASE_UNCASED, options), gpu_encoder(DISTILBERT_BASE_UNCASED, options), llama]
}

fn reference_rows(options: &PresetOptions) -> Vec<RowSpec> {
    // The ids the reference setup writes; the hub (and polarity-hub offline) redirect them.
    vec![reference_encoder("bert-base-uncased", options), reference_encoder("distilbert-base-uncased", options), {
        let mut row = reference_causal_lm(LLAMA3_8B_INSTRUCT, options);
        row.name = "meta-llama-3-8b-instruct-qlora".into();
        row
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_preset_asks_for_random_weights_by_name() {
        let rows = Preset::Default.rows(&PresetOptions::default());
        let names: Vec<&str> = rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "all-minilm-l6-v2",
                "smollm2-135m-instruct-lora",
                "bert-base-uncased",
                "distilbert-base-uncased",
                "meta-llama-3-8b-instruct-qlora"
            ]
        );
        let inits: Vec<WeightInit> = rows.iter().map(RowSpec::init).collect();
        use WeightInit::{Pretrained, Random};
        assert_eq!(inits, [Pretrained, Pretrained, Random, Random, Random]);
        for row in &rows {
            row.validate().unwrap();
            assert!(!row.is_full_size(), "{}", row.name);
        }
        assert!(rows[4].tuning().starts_with("QLoRA (4-bit base) r 16, alpha 32"), "{}", rows[4].tuning());
    }

    #[test]
    fn the_reference_preset_is_the_reference_setup() {
        let rows = Preset::Reference.rows(&PresetOptions { max_length: 512, ..PresetOptions::default() });
        for row in &rows {
            row.validate().unwrap();
            assert!(row.is_full_size());
            assert_eq!(row.max_length(), 512);
            assert_eq!(row.init(), WeightInit::Pretrained);
        }
        let RecipeConfig::Encoder(bert) = &rows[0].recipe else { panic!("BERT is an encoder row") };
        assert_eq!(
            (bert.model.as_str(), bert.trainer.learning_rate, bert.trainer.batch_size, bert.trainer.epochs),
            ("bert-base-uncased", 2e-5, 16, 3)
        );
        let RecipeConfig::Lora(llama) = &rows[2].recipe else { panic!("Llama is a LoRA row") };
        assert!(llama.qlora);
        assert_eq!((llama.trainer.batch_size, llama.trainer.grad_accum, llama.trainer.learning_rate), (1, 16, 2e-4));
    }

    #[test]
    fn rows_for_any_model_follow_its_config() {
        let options = PresetOptions::default();
        let row = Preset::Default.row_for_model(BERT_BASE_UNCASED, WeightInit::Random, &options).unwrap();
        assert_eq!((row.name.as_str(), row.init()), ("bert-base-uncased", WeightInit::Random));
        let row = Preset::Default.row_for_model(LLAMA3_8B_INSTRUCT, WeightInit::Random, &options).unwrap();
        assert!(matches!(row.recipe, RecipeConfig::Lora(_)));
        assert_eq!(row.name, "meta-llama-3-8b-instruct-lora");
        let error = Preset::Default.row_for_model("no-such-org/no-such-model", WeightInit::Pretrained, &options);
        assert!(matches!(error, Err(BenchError::UnsupportedModel { .. })));
        let mut bad = row.clone();
        bad.name = "../escape".into();
        assert!(matches!(bad.validate(), Err(BenchError::InvalidRowName(_))));
    }
}
