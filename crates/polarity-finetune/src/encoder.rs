//! Full fine-tuning of a BERT or DistilBERT classifier: [`EncoderFineTune`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use polarity_core::backend::{TrainBackend, default_backend_name, default_device, with_seed};
use polarity_core::params::materialize;
use polarity_core::{ExampleSource, FineTuned, FineTuner};
use polarity_encoder::{CONFIG_FILE, EncoderClassifier, EncoderError, HfConfigJson, LoadReport};
use polarity_hub::{HubError, RepoKind, RepoSource};
use polarity_tokenize::{Encode, HfTokenizer, ModelLimits, TokenizedExample};
use polarity_train::{
    Collective, CrossEntropyObjective, TextClassifier, TrainOutcome, Trainer, TrainerConfig, tokenize_examples,
    world_from_env,
};
use serde::{Deserialize, Serialize};

use crate::data::TokenizedData;
use crate::evaluate::{EvalMethod, evaluate_by_scores};
use crate::report::{ModelReport, RecipeConfig, RunReport, Timings, WeightInit, peak_rss_bytes};
use crate::{Experiment, ExperimentData, FinetuneError, InferenceBackend};

/// The smallest [`EncoderFineTune::max_length`]: `[CLS]`, one token, `[SEP]`.
pub const MIN_ENCODER_MAX_LENGTH: usize = 3;

/// A fine-tuned encoder with its tokenizer: a text [`Classifier`](polarity_core::Classifier) (argmax of
/// the two logits).
pub type EncoderTextClassifier<B> = TextClassifier<B, EncoderClassifier<B>, HfTokenizer, CrossEntropyObjective>;

/// Full fine-tuning of an encoder checkpoint as a sequence classifier (transformers'
/// `*ForSequenceClassification` with HF Trainer): every parameter trains, a bare encoder gets a fresh
/// classification head seeded by the trainer's seed.
///
/// [`init`](Self::init) says where the starting weights come from: the checkpoint's
/// ([`WeightInit::Pretrained`], the default; a model without weights is [`FinetuneError::NoWeights`],
/// never random weights), or seeded random weights of the shape `config.json` describes
/// ([`WeightInit::Random`]: no weights file is read, for speed and memory measurements at a model's real
/// shape, e.g. BERT-base where only its config and tokenizer are at hand). The run's
/// [`ModelReport`] records which, and how many tensors were loaded (0 with random weights).
///
/// ```no_run
/// use polarity_core::{Classifier, FineTuner};
/// use polarity_finetune::{DataConfig, EncoderFineTune};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let data = DataConfig::imdb(2000, 1000).load()?;
/// let recipe = EncoderFineTune::new("distilbert/distilbert-base-uncased");
/// let tuned = recipe.fine_tune(&data.train, Some(&data.test))?;
/// let predictions = tuned.classifier.predict(&["A quiet, moving film."])?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderFineTune {
    /// Hub id (resolved through the hub cache first; legacy ids such as `bert-base-uncased` name their
    /// organisation's repository) or local directory with `config.json`, `tokenizer.json` and, unless
    /// [`init`](Self::init) is random, `model.safetensors` (or shards).
    pub model: String,
    /// Reviews are truncated to this many tokens, special tokens included.
    pub max_length: usize,
    /// Where the starting weights come from: the checkpoint's (the default), or random ones of the shape
    /// `config.json` describes.
    #[serde(default)]
    pub init: WeightInit,
    /// Optimiser, schedule, batches, epochs, precision, checkpoints.
    pub trainer: TrainerConfig,
}

impl EncoderFineTune {
    /// The reference setup for `model`: max length 256, AdamW lr 2e-5 (weight decay 0.01 except biases and
    /// LayerNorm), batch 16, 3 epochs, no warmup, gradient norm clipped to 1, evaluation every epoch and the
    /// best epoch (by accuracy) kept, seed 42.
    pub fn new(model: impl Into<String>) -> Self {
        let trainer = TrainerConfig::default().with_batch_size(16).with_eval_batch_size(64);
        Self { model: model.into(), max_length: 256, init: WeightInit::Pretrained, trainer }
    }

    /// Sets the maximum length in tokens.
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = max_length;
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

    fn source(&self) -> RepoSource {
        RepoSource::parse(&self.model, RepoKind::Model)
    }

    fn encoder_error(&self, source: EncoderError) -> FinetuneError {
        match source {
            EncoderError::Hub(source @ HubError::NoWeights { .. }) => {
                FinetuneError::NoWeights { model: self.model.clone(), source: Box::new(source) }
            }
            source => FinetuneError::Encoder { model: self.model.clone(), source: Box::new(source) },
        }
    }

    /// The model's tokenizer, truncating to [`max_length`](Self::max_length).
    pub fn tokenizer(&self) -> Result<HfTokenizer, FinetuneError> {
        Ok(HfTokenizer::from_pretrained(&self.model, self.max_length)?)
    }

    /// The classifier before training, and where its tensors came from.
    ///
    /// With [`WeightInit::Pretrained`] the checkpoint's weights (a bare encoder's new head freshly
    /// initialised); a model without weights is [`FinetuneError::NoWeights`]. With [`WeightInit::Random`]
    /// the classifier `config.json` describes, every tensor drawn from the backend's random generator (no
    /// weights file is read; the report lists every tensor as initialised, none as loaded).
    pub fn load<B: Backend>(&self, device: &B::Device) -> Result<(EncoderClassifier<B>, LoadReport), FinetuneError> {
        let source = self.source();
        let loaded = match self.init {
            WeightInit::Pretrained => EncoderClassifier::from_pretrained_with_report(&source, device),
            WeightInit::Random => source
                .file(CONFIG_FILE)
                .map_err(EncoderError::from)
                .and_then(|path| HfConfigJson::read(&path))
                .and_then(|config| EncoderClassifier::from_config_random(&config, device)),
        };
        loaded.map_err(|e| self.encoder_error(e))
    }

    /// Checks that `tokenizer`'s output fits `model` (ids inside its embeddings, `max_length` inside its
    /// positions, a `[CLS]` in front to pool), so that no batch can index outside its tables.
    fn check_pairing<B: Backend>(
        &self,
        model: &EncoderClassifier<B>,
        tokenizer: &HfTokenizer,
    ) -> Result<(), FinetuneError> {
        Ok(tokenizer.check_model(&ModelLimits {
            model: self.model.clone(),
            vocab_size: model.vocab_size(),
            max_positions: model.max_position_embeddings(),
            type_vocab_size: model.type_vocab_size(),
            pools_first_token: true,
        })?)
    }

    /// Checks the recipe's settings before anything is loaded: [`max_length`](Self::max_length) at least
    /// [`MIN_ENCODER_MAX_LENGTH`] (room for `[CLS]`, `[SEP]` and one token) and the trainer's settings
    /// ([`TrainerConfig::validate`]). The maximum length is checked against the model's position embeddings
    /// once it is loaded.
    pub fn validate(&self) -> Result<(), FinetuneError> {
        if self.max_length < MIN_ENCODER_MAX_LENGTH {
            return Err(FinetuneError::InvalidSetting {
                field: "max_length",
                value: self.max_length.to_string(),
                reason: "must leave room for [CLS], [SEP] and at least one token (at least 3)",
            });
        }
        Ok(self.trainer.validate()?)
    }

    /// An error if [`max_length`](Self::max_length) exceeds `model`'s position embeddings: checked as soon as the
    /// model is loaded, before the tokenizer is read.
    fn check_max_length<B: Backend>(&self, model: &EncoderClassifier<B>) -> Result<(), FinetuneError> {
        let positions = model.max_position_embeddings();
        if self.max_length > positions {
            return Err(FinetuneError::InvalidSetting {
                field: "max_length",
                value: format!("{} for {} (max_position_embeddings {positions})", self.max_length, self.model),
                reason: "longer than the model's position embeddings",
            });
        }
        Ok(())
    }

    /// [`load`](Self::load) from the trainer's seed, with every fresh parameter (the new classification
    /// head, or all of them with [`WeightInit::Random`]) drawn before it returns, under the process's lock
    /// on the generator: ranks running as threads build the same model.
    fn seeded_load<B: AutodiffBackend>(
        &self,
        device: &B::Device,
    ) -> Result<(EncoderClassifier<B>, LoadReport), FinetuneError> {
        with_seed::<B, _>(device, self.trainer.seed, || {
            let (model, report) = self.load::<B>(device)?;
            materialize::<B, _>(&model);
            Ok((model, report))
        })
    }

    fn train<B: AutodiffBackend>(
        &self,
        model: EncoderClassifier<B>,
        tokenizer: &HfTokenizer,
        train: &[TokenizedExample],
        eval: Option<&[TokenizedExample]>,
        device: &B::Device,
        collective: Arc<dyn Collective>,
    ) -> Result<TrainOutcome<EncoderClassifier<B>>, FinetuneError> {
        let trainer = Trainer::<B>::new(self.trainer.clone(), device.clone()).with_collective(collective);
        Ok(trainer.fit(model, &CrossEntropyObjective::new(tokenizer.pad_id()), train, eval)?)
    }

    fn classifier<B: Backend>(
        &self,
        model: EncoderClassifier<B>,
        tokenizer: HfTokenizer,
        device: &B::Device,
    ) -> EncoderTextClassifier<B> {
        TextClassifier {
            model,
            scorer: CrossEntropyObjective::new(tokenizer.pad_id()),
            tokenizer,
            device: device.clone(),
            batch_size: self.trainer.eval_batch_size,
        }
    }

    /// [`FineTuner::fine_tune`] on any autodiff backend and device.
    pub fn fine_tune_on<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        train: &dyn ExampleSource,
        eval: Option<&dyn ExampleSource>,
    ) -> Result<FineTuned<EncoderTextClassifier<B::InnerBackend>>, FinetuneError> {
        self.validate()?;
        let tokenizer = self.tokenizer()?;
        let (model, _) = self.seeded_load::<B>(device)?;
        self.check_pairing(&model, &tokenizer)?;
        let train = tokenize_examples(&tokenizer, train)?;
        let eval = eval.map(|eval| tokenize_examples(&tokenizer, eval)).transpose()?;
        let outcome = self.train(model, &tokenizer, &train, eval.as_deref(), device, world_from_env()?)?;
        let summary = outcome.summary();
        Ok(FineTuned { classifier: self.classifier(outcome.model.valid(), tokenizer, device), summary })
    }

    /// The whole experiment on the default backend (the CPU, or CUDA with `--features cuda`): fine-tunes on
    /// `data.train`, picks the best epoch on `data.validation` (or `data.test` without one), evaluates the
    /// returned model on `data.test`, and reports it all with timings and peak memory.
    pub fn run(
        &self,
        data: &ExperimentData,
    ) -> Result<Experiment<EncoderTextClassifier<InferenceBackend>>, FinetuneError> {
        self.run_on::<TrainBackend>(&default_device()?, default_backend_name(), data)
    }

    /// [`run`](Self::run) on any autodiff backend and device; `backend` names it in the report. Under an MPI
    /// launcher the process trains as one rank of the group ([`world_from_env`]).
    pub fn run_on<B: AutodiffBackend>(
        &self,
        device: &B::Device,
        backend: &str,
        data: &ExperimentData,
    ) -> Result<Experiment<EncoderTextClassifier<B::InnerBackend>>, FinetuneError> {
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
    ) -> Result<Experiment<EncoderTextClassifier<B::InnerBackend>>, FinetuneError> {
        let started = Instant::now();
        self.validate()?;
        let (model, load_report) = self.seeded_load::<B>(device)?;
        self.check_max_length(&model)?;
        let tokenizer = self.tokenizer()?;
        self.check_pairing(&model, &tokenizer)?;
        let load_seconds = started.elapsed().as_secs_f64();

        let tokenized = TokenizedData::encode(&tokenizer, data)?;

        let architecture = format!("{:?}", model.architecture()).to_lowercase();
        tracing::info!(
            "{} ({architecture}): {} tensors loaded, {} freshly initialised; {} train / {} test reviews, {:.1} \
             tokens per training review (max {})",
            self.model,
            load_report.loaded.len(),
            load_report.initialised.len(),
            tokenized.train.len(),
            tokenized.test.len(),
            tokenized.mean_train_tokens(),
            self.max_length
        );
        let outcome =
            self.train(model, &tokenizer, &tokenized.train, Some(tokenized.selection()), device, collective.clone())?;
        let training = outcome.summary();
        let model = outcome.model.valid();
        let parameters = model.num_params();
        let scorer = CrossEntropyObjective::new(tokenizer.pad_id());
        let evaluation = evaluate_by_scores(
            &scorer,
            &model,
            &tokenized.test,
            self.trainer.eval_batch_size,
            self.trainer.evaluation_precision(),
            EvalMethod::ClassScores,
            device,
            collective.as_ref(),
        )?;

        let report = RunReport {
            recipe: RecipeConfig::Encoder(self.clone()),
            data: tokenized.report(data, None),
            model: ModelReport {
                source: self.model.clone(),
                init: self.init,
                architecture,
                backend: backend.to_string(),
                precision: self.trainer.precision,
                parameters,
                trainable_parameters: parameters,
                tensors_loaded: Some(load_report.loaded.len()),
                tensors_initialised: load_report.initialised.clone(),
                weight_memory: None,
            },
            zero_shot: None,
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
        Ok(Experiment { report, classifier: self.classifier(model, tokenizer, device) })
    }

    /// Writes `classifier` as a transformers checkpoint into `dir` (config.json, model.safetensors and the
    /// tokenizer files of [`model`](Self::model) that exist), which `AutoModelForSequenceClassification`
    /// loads unchanged.
    pub fn export<B: Backend>(&self, classifier: &EncoderTextClassifier<B>, dir: &Path) -> Result<(), FinetuneError> {
        let source = self.source();
        let hub_error = |source| FinetuneError::Hub { model: self.model.clone(), source: Box::new(source) };
        let tokenizer_files: Vec<PathBuf> =
            ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
                .into_iter()
                .filter(|file| source.has_cached(file))
                .map(|file| source.file(file).map_err(hub_error))
                .collect::<Result<_, _>>()?;
        classifier.model.save_pretrained(dir, &tokenizer_files).map_err(|e| self.encoder_error(e))
    }
}

impl FineTuner for EncoderFineTune {
    type Classifier = EncoderTextClassifier<InferenceBackend>;
    type Error = FinetuneError;

    /// Fine-tunes on the default backend (the CPU, or CUDA with `--features cuda`).
    fn fine_tune(
        &self,
        train: &dyn ExampleSource,
        eval: Option<&dyn ExampleSource>,
    ) -> Result<FineTuned<Self::Classifier>, FinetuneError> {
        self.fine_tune_on::<TrainBackend>(&default_device()?, train, eval)
    }
}
