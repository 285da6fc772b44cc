//! LoRA and QLoRA tuning of a Llama-architecture causal LM as a sentiment classifier: [`LoraFineTune`].

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_core::backend::{TrainBackend, default_backend_name, default_device, with_seed};
use polarity_core::params::materialize;
use polarity_core::{ExampleSource, FineTuned, FineTuner};
use polarity_hub::{HubError, RepoKind, RepoSource};
use polarity_llama::{
    LLAMA_DEFAULT_TARGET_MODULES, LLAMA_TARGET_MODULES, LabelWords, Llama, LlamaConfig, LlamaError, LlamaTokenizer,
    LoraConfig, PromptEncoder,
};
use polarity_tokenize::{DEFAULT_TEMPLATE, Encode, PromptTemplate, TokenizedExample};
use polarity_train::{
    Collective, TextClassifier, TrainOutcome, Trainer, TrainerConfig, Warmup, tokenize_examples, world_from_env,
};
use serde::{Deserialize, Serialize};

use crate::data::TokenizedData;
use crate::evaluate::{ClassifyBy, EvalMethod, EvaluationReport, evaluate_by_generation, evaluate_by_scores};
use crate::objective::CausalLmObjective;
use crate::report::{ModelReport, RecipeConfig, RunReport, Timings, WeightInit, WeightMemoryReport, peak_rss_bytes};
use crate::{Experiment, ExperimentData, FinetuneError, InferenceBackend};

/// The most tokens [`ClassifyBy::Generation`] may generate before its answer is parsed.
pub const MAX_NEW_TOKENS: usize = 4096;

/// A tuned causal LM with its prompt encoder: a text [`Classifier`](polarity_core::Classifier) that
/// predicts by the label words' next-token logits after the prompt.
pub type LoraTextClassifier<B> = TextClassifier<B, Llama<B>, PromptEncoder, CausalLmObjective>;

/// LoRA tuning (PEFT semantics) of a Llama-architecture causal LM on the answer-only objective: each
/// review becomes the prompt of [`template`](Self::template), and the loss is the next-token
/// cross-entropy of the gold label word (`" positive"` / `" negative"`) after it. With
/// [`qlora`](Self::qlora) the frozen base stays quantised in memory (the GGUF file's own blocks, or NF4
/// for a safetensors base).
///
/// ```no_run
/// use polarity_core::{Classifier, FineTuner};
/// use polarity_finetune::{DataConfig, LoraFineTune};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let data = DataConfig::imdb(500, 500).load()?;
/// let recipe = LoraFineTune::new("meta-llama/Meta-Llama-3-8B-Instruct").with_qlora(true);
/// let tuned = recipe.fine_tune(&data.train, None)?;
/// let predictions = tuned.classifier.predict(&["A quiet, moving film."])?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraFineTune {
    /// A llama.cpp `.gguf` file (weights and tokenizer), or a hub id / local directory with `config.json`,
    /// safetensors (single or sharded) and `tokenizer.json`.
    pub model: String,
    /// Maximum prompt length in tokens; only the review is shortened to fit, never the instruction or the
    /// answer cue.
    pub max_length: usize,
    /// Where the starting weights come from (the checkpoint's by default).
    #[serde(default)]
    pub init: WeightInit,
    /// Rank, alpha, dropout and target projections of the adapters.
    pub lora: LoraConfig,
    /// Keep the frozen base quantised in memory (QLoRA).
    pub qlora: bool,
    /// The prompt, with `{review}` where the review goes (see [`PromptTemplate`]).
    pub template: String,
    /// How answers are read in [`run`](Self::run)'s evaluations ([`predict`](polarity_core::Classifier)
    /// always scores the label words).
    pub classify_by: ClassifyBy,
    /// [`run`](Self::run) also evaluates the base model before tuning.
    pub zero_shot: bool,
    /// Optimiser, schedule, batches, epochs, precision, checkpoints.
    pub trainer: TrainerConfig,
}

impl LoraFineTune {
    /// The reference setup for `model`: LoRA r 16, alpha 32, dropout 0.05 on q_proj and v_proj, max length
    /// 256, AdamW lr 2e-4 without weight decay, batch 1 x accumulation 16, 1 epoch, 3 % warmup, gradient norm
    /// clipped to 1, label-word scoring, zero-shot evaluated first, seed 42; QLoRA off (see
    /// [`with_qlora`](Self::with_qlora)).
    pub fn new(model: impl Into<String>) -> Self {
        let trainer = TrainerConfig::default()
            .with_epochs(1)
            .with_batch_size(1)
            .with_grad_accum(16)
            .with_eval_batch_size(8)
            .with_learning_rate(2e-4)
            .with_weight_decay(0.0)
            .with_warmup(Warmup::Ratio(0.03))
            .with_best_metric(None);
        Self {
            model: model.into(),
            max_length: 256,
            init: WeightInit::Pretrained,
            lora: LoraConfig::new(16, 32.0)
                .with_lora_dropout(0.05)
                .with_target_modules(polarity_llama::LLAMA_DEFAULT_TARGET_MODULES.map(String::from).to_vec()),
            qlora: false,
            template: DEFAULT_TEMPLATE.to_string(),
            classify_by: ClassifyBy::LabelWords,
            zero_shot: true,
            trainer,
        }
    }

    /// Sets QLoRA.
    pub fn with_qlora(mut self, qlora: bool) -> Self {
        self.qlora = qlora;
        self
    }

    /// Sets the maximum prompt length.
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = max_length;
        self
    }

    /// Sets the adapters' settings.
    pub fn with_lora(mut self, lora: LoraConfig) -> Self {
        self.lora = lora;
        self
    }

    /// Sets how [`run`](Self::run) reads answers.
    pub fn with_classify_by(mut self, classify_by: ClassifyBy) -> Self {
        self.classify_by = classify_by;
        self
    }

    /// Sets whether [`run`](Self::run) evaluates the base model first.
    pub fn with_zero_shot(mut self, zero_shot: bool) -> Self {
        self.zero_shot = zero_shot;
        self
    }

    /// Sets where the starting weights come from.
    pub fn with_init(mut self, init: WeightInit) -> Self {
        self.init = init;
        self
    }

    /// Sets the trainer's settings.
    pub fn with_trainer(mut self, trainer: TrainerConfig) -> Self {
        self.trainer = trainer;
        self
    }

    /// Checks the recipe's settings before anything is loaded: the adapters' settings as an adapter file's
    /// are checked ([`LoraConfig::validate`](polarity_llama::LoraConfig::validate): rank, alpha, dropout, targets),
    /// a maximum length of at least 1,
    /// generation's `max_new_tokens` in 1..=[`MAX_NEW_TOKENS`], and the trainer's settings
    /// ([`TrainerConfig::validate`]). Each error names the setting and its value.
    pub fn validate(&self) -> Result<(), FinetuneError> {
        let invalid = |field: &'static str, value: String, reason: &'static str| {
            Err(FinetuneError::InvalidSetting { field, value, reason })
        };
        // The adapters' bounds are the ones adapter files are held to (rank, alpha, dropout, targets).
        let lora = self.lora.clone().with_default_targets(&LLAMA_DEFAULT_TARGET_MODULES);
        lora.validate(&LLAMA_TARGET_MODULES).map_err(|e| self.llama_error(e))?;
        if self.max_length == 0 {
            return invalid("max_length", "0".into(), "the prompt needs at least one token");
        }
        if let ClassifyBy::Generation { max_new_tokens } = self.classify_by
            && !(1..=MAX_NEW_TOKENS).contains(&max_new_tokens)
        {
            return invalid("max_new_tokens", max_new_tokens.to_string(), "must be between 1 and 4096");
        }
        Ok(self.trainer.validate()?)
    }

    fn llama_error(&self, source: LlamaError) -> FinetuneError {
        FinetuneError::Llama { model: self.model.clone(), source: Box::new(source) }
    }

    fn gguf_path(&self) -> Option<&Path> {
        let path = Path::new(&self.model);
        path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("gguf")).then_some(path)
    }

    /// The base model (no adapters; frozen projections quantised with [`qlora`](Self::qlora)) and its
    /// tokenizer.
    ///
    /// With [`WeightInit::Pretrained`] the checkpoint's weights are loaded; a hub id or directory that has
    /// a `config.json` but no weights is [`FinetuneError::NoWeights`], naming the model and the files
    /// looked for. With [`WeightInit::Random`] only `config.json` and `tokenizer.json` are read and the
    /// model is built with random weights seeded by the trainer's seed: straight into NF4 with
    /// [`qlora`](Self::qlora) ([`LlamaConfig::init_quantized_random`], which also keeps an untied token
    /// embedding table and LM head in NF4), dense f32 without ([`LlamaConfig::init`], drawn from the backend's
    /// generator, which [`run`](Self::run) seeds). A `.gguf` file with [`WeightInit::Random`] is refused:
    /// the file is a checkpoint, and its architecture alone is not worth reading it for.
    pub fn load_base<B: Backend>(&self, device: &B::Device) -> Result<(Llama<B>, LlamaTokenizer), FinetuneError> {
        if let Some(path) = self.gguf_path() {
            if self.init == WeightInit::Random {
                return Err(FinetuneError::InvalidSetting {
                    field: "init",
                    value: format!("{} for the GGUF file {}", self.init, path.display()),
                    reason: "random weights are built from a config.json (a hub id or a model directory); a GGUF \
                             file is loaded with its own weights (init = pretrained)",
                });
            }
            if !path.is_file() {
                return Err(FinetuneError::MissingGguf(path.to_path_buf()));
            }
            let loaded =
                if self.qlora { Llama::from_gguf_quantized(path, device) } else { Llama::from_gguf(path, device) };
            return loaded.map_err(|e| self.llama_error(e));
        }
        let source = RepoSource::parse(&self.model, RepoKind::Model);
        let hub_error = |source| FinetuneError::Hub { model: self.model.clone(), source: Box::new(source) };
        let model = match self.init {
            WeightInit::Pretrained => {
                let model = Llama::from_pretrained(&source, device).map_err(|e| self.pretrained_error(e))?;
                if self.qlora { model.quantize_frozen_base().map_err(|e| self.llama_error(e))? } else { model }
            }
            WeightInit::Random => {
                let config = LlamaConfig::from_hf_file(&source.file("config.json").map_err(hub_error)?)
                    .map_err(|e| self.llama_error(e))?;
                let built = if self.qlora {
                    config.init_quantized_random(device, self.trainer.seed)
                } else {
                    config.init(device)
                };
                built.map_err(|e| self.llama_error(e))?
            }
        };
        let tokenizer_file = source.file("tokenizer.json").map_err(hub_error)?;
        let tokenizer = LlamaTokenizer::from_file(&tokenizer_file).map_err(|e| self.llama_error(e))?;
        // An id past the embedding table (added tokens beyond vocab_size) would index out of it.
        tokenizer.check_vocab(model.vocab_size(), &self.model).map_err(|e| self.llama_error(e))?;
        Ok((model, tokenizer))
    }

    /// [`FinetuneError::NoWeights`] for a checkpoint without weights, else [`FinetuneError::Llama`].
    fn pretrained_error(&self, error: LlamaError) -> FinetuneError {
        match error {
            LlamaError::Hub(source @ HubError::NoWeights { .. }) => {
                FinetuneError::NoWeights { model: self.model.clone(), source: Box::new(source) }
            }
            other => self.llama_error(other),
        }
    }

    /// The prompt encoder and the training objective for `tokenizer`.
    pub fn prompts(&self, tokenizer: &LlamaTokenizer) -> Result<(PromptEncoder, CausalLmObjective), FinetuneError> {
        let template = PromptTemplate::new(self.template.clone())?;
        let encoder =
            PromptEncoder::new(tokenizer.clone(), template, self.max_length).map_err(|e| self.llama_error(e))?;
        let label_words = LabelWords::from_tokenizer(tokenizer).map_err(|e| self.llama_error(e))?;
        let objective = CausalLmObjective::new(label_words, encoder.pad_id());
        Ok((encoder, objective))
    }

    /// [`load_base`](Self::load_base) from the trainer's seed under the process's lock on the generator,
    /// every parameter drawn before it returns (random weights), so that ranks running as threads build the
    /// same base.
    fn seeded_load_base<B: AutodiffBackend>(
        &self,
        device: &B::Device,
    ) -> Result<(Llama<B>, LlamaTokenizer), FinetuneError> {
        with_seed::<B, _>(device, self.trainer.seed, || {
            let (base, tokenizer) = self.load_base::<B>(device)?;
            materialize::<B, _>(&base);
            Ok((base, tokenizer))
        })
    }

    fn train<B: AutodiffBackend>(
        &self,
        base: Llama<B>,
        objective: &CausalLmObjective,
        train: &[TokenizedExample],
        eval: Option<&[TokenizedExample]>,
        device: &B::Device,
        collective: Arc<dyn Collective>,
    ) -> Result<TrainOutcome<Llama<B>>, FinetuneError> {
        // The adapters' lora_A are drawn here, from the trainer's seed, under the process's lock on the
        // generator (ranks running as threads draw the same adapters), before the trainer reseeds its steps.
        let model = with_seed::<B, _>(device, self.trainer.seed, || {
            let model = base.with_lora(&self.lora).map_err(|e| self.llama_error(e))?;
            materialize::<B, _>(&model);
            Ok::<_, FinetuneError>(model)
        })?;
        let trainable = trainable_parameters(&model);
        tracing::info!(
            "LoRA r={} alpha={} dropout={} on {} ({trainable} trainable parameters); {} epochs of {} examples",
            self.lora.r,
            self.lora.lora_alpha,
            self.lora.lora_dropout,
            self.lora.target_modules.join("+"),
            self.trainer.epochs,
            train.len()
        );
        let trainer = Trainer::<B>::new(self.trainer.clone(), device.clone()).with_collective(collective);
        Ok(trainer.fit(model, objective, train, eval)?)
    }

    fn classifier<B: Backend>(
        &self,
        model: Llama<B>,
        encoder: PromptEncoder,
        objective: CausalLmObjective,
        device: &B::Device,
    ) -> LoraTextClassifier<B> {
        TextClassifier {
            model,
            tokenizer: encoder,
            scorer: objective,
            device: device.clone(),
            batch_size: self.trainer.eval_batch_size,
        }
    }

    /// Evaluates `model` on the prompts `data` as [`classify_by`](Self::classify_by) says, sharded over
    /// `collective`'s ranks ([`SingleProcess`](polarity_train::SingleProcess) for one process).
    pub fn evaluate<B: Backend>(
        &self,
        model: &Llama<B>,
        tokenizer: &LlamaTokenizer,
        objective: &CausalLmObjective,
        data: &[TokenizedExample],
        device: &B::Device,
        collective: &dyn Collective,
    ) -> Result<EvaluationReport, FinetuneError> {
        let (batch_size, precision) = (self.trainer.eval_batch_size, self.trainer.evaluation_precision());
        match self.classify_by {
            ClassifyBy::LabelWords => evaluate_by_scores(
                objective,
                model,
                data,
                batch_size,
                precision,
                EvalMethod::LabelWords,
                device,
                collective,
            ),
            ClassifyBy::Generation { max_new_tokens } => evaluate_by_generation(
                model,
                tokenizer,
                data,
                batch_size,
                max_new_tokens,
                precision,
                device,
                collective,
            ),
        }
    }

    /// [`FineTuner::fine_tune`] on any autodiff backend and device.
    pub fn fine_tune_on<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        train: &dyn ExampleSource,
        eval: Option<&dyn ExampleSource>,
    ) -> Result<FineTuned<LoraTextClassifier<B::InnerBackend>>, FinetuneError> {
        self.validate()?;
        let (base, tokenizer) = self.seeded_load_base::<B>(device)?;
        let (encoder, objective) = self.prompts(&tokenizer)?;
        let train = tokenize_examples(&encoder, train)?;
        let eval = eval.map(|eval| tokenize_examples(&encoder, eval)).transpose()?;
        let outcome = self.train(base, &objective, &train, eval.as_deref(), device, world_from_env()?)?;
        let summary = outcome.summary();
        Ok(FineTuned { classifier: self.classifier(outcome.model.valid(), encoder, objective, device), summary })
    }

    /// The whole experiment on the default backend (the CPU, or CUDA with `--features cuda`): zero-shot
    /// evaluation of the base on `data.test` (where [`zero_shot`](Self::zero_shot)), LoRA tuning on
    /// `data.train` (evaluating on `data.validation` every epoch where given; the test subset is scored once,
    /// after training), then the tuned model on `data.test`, with timings and peak memory.
    pub fn run(
        &self,
        data: &ExperimentData,
    ) -> Result<Experiment<LoraTextClassifier<InferenceBackend>>, FinetuneError> {
        self.run_on::<TrainBackend>(&default_device()?, default_backend_name(), data)
    }

    /// [`run`](Self::run) on any autodiff backend and device; `backend` names it in the report. Under an MPI
    /// launcher the process trains as one rank of the group ([`world_from_env`]).
    pub fn run_on<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        backend: &str,
        data: &ExperimentData,
    ) -> Result<Experiment<LoraTextClassifier<B::InnerBackend>>, FinetuneError> {
        self.run_on_rank::<B>(device, backend, data, world_from_env()?)
    }

    /// [`run_on`](Self::run_on) as one rank of a data-parallel group (see [`Collective`]; a
    /// [`LocalGroup`](polarity_train::LocalGroup) rank per device of this process, or the MPI world):
    /// every rank calls it with the same recipe and data, reads its shard of each global batch of
    /// `batch_size x world_size` reviews, and returns the same trained model and report.
    pub fn run_on_rank<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        backend: &str,
        data: &ExperimentData,
        collective: Arc<dyn Collective>,
    ) -> Result<Experiment<LoraTextClassifier<B::InnerBackend>>, FinetuneError> {
        let started = Instant::now();
        self.validate()?;
        let (base, tokenizer) = self.seeded_load_base::<B>(device)?;
        let (encoder, objective) = self.prompts(&tokenizer)?;
        let memory = base.weight_memory();
        let load_seconds = started.elapsed().as_secs_f64();

        let tokenized = TokenizedData::encode(&encoder, data)?;
        let shortened =
            [&data.train, &data.test].map(|set| encoder.count_shortened(&set.texts()).map_err(|e| self.llama_error(e)));
        let [train_shortened, test_shortened] = shortened;
        let shortened = [train_shortened?, test_shortened?];
        let (train, test) = (&tokenized.train, &tokenized.test);

        tracing::info!(
            "{}: {} layers, loaded in {load_seconds:.1}s; {} train / {} test prompts, {:.1} tokens per training \
             prompt (max {}; {} train and {} test reviews shortened)",
            self.model,
            base.num_layers(),
            train.len(),
            test.len(),
            tokenized.mean_train_tokens(),
            self.max_length,
            shortened[0],
            shortened[1],
        );
        let zero_shot = if self.zero_shot {
            tracing::info!("zero-shot evaluation on {} test prompts ({:?})", test.len(), self.classify_by);
            Some(self.evaluate(&base.valid(), &tokenizer, &objective, test, device, collective.as_ref())?)
        } else {
            None
        };
        let outcome =
            self.train(base, &objective, train, tokenized.validation.as_deref(), device, collective.clone())?;
        let training = outcome.summary();
        let trainable_parameters = trainable_parameters(&outcome.model);
        let model = outcome.model.valid();
        tracing::info!("evaluating the tuned model on {} test prompts", test.len());
        let evaluation = self.evaluate(&model, &tokenizer, &objective, test, device, collective.as_ref())?;

        let report = RunReport {
            recipe: RecipeConfig::Lora(self.clone()),
            data: tokenized.report(data, Some(shortened)),
            model: ModelReport {
                source: self.model.clone(),
                init: self.init,
                architecture: "llama".into(),
                backend: backend.to_string(),
                precision: self.trainer.precision,
                parameters: memory.parameters() + trainable_parameters,
                trainable_parameters,
                tensors_loaded: None,
                tensors_initialised: Vec::new(),
                weight_memory: Some(WeightMemoryReport {
                    dense_bytes: memory.dense_bytes,
                    quantized_bytes: memory.quantized_bytes,
                    quantized_as_f32_bytes: memory.quantized_f32_bytes,
                }),
            },
            zero_shot,
            evaluation,
            timings: Timings {
                load_seconds,
                tokenize_seconds: tokenized.seconds,
                train_seconds: training.train_seconds(),
                total_seconds: started.elapsed().as_secs_f64(),
            },
            training,
            peak_rss_bytes: peak_rss_bytes(),
        };
        Ok(Experiment { report, classifier: self.classifier(model, encoder, objective, device) })
    }

    /// Saves the classifier's adapters in PEFT's format into `dir` (`adapter_config.json`,
    /// `adapter_model.safetensors`), naming [`model`](Self::model) as the base.
    pub fn save_adapter<B: Backend>(
        &self,
        classifier: &LoraTextClassifier<B>,
        dir: &Path,
    ) -> Result<(), FinetuneError> {
        classifier.model.save_lora(dir, &self.lora, Some(&self.model)).map_err(|e| self.llama_error(e))
    }
}

/// Parameters of `model`'s LoRA adapters.
fn trainable_parameters<B: Backend>(model: &Llama<B>) -> usize {
    model.lora_adapters().iter().map(|(_, adapter)| adapter.num_params()).sum()
}

impl FineTuner for LoraFineTune {
    type Classifier = LoraTextClassifier<InferenceBackend>;
    type Error = FinetuneError;

    /// Tunes on the default backend (the CPU, or CUDA with `--features cuda`).
    fn fine_tune(
        &self,
        train: &dyn ExampleSource,
        eval: Option<&dyn ExampleSource>,
    ) -> Result<FineTuned<Self::Classifier>, FinetuneError> {
        self.fine_tune_on::<TrainBackend>(&default_device()?, train, eval)
    }
}
