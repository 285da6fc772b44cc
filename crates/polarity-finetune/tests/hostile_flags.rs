//! Hostile recipe settings (what the examples' flags set): each is refused with a typed error naming the
//! setting and its value, before a dataset or a model is read, and never with a panic or an allocation sized by
//! the value.

mod common;

use burn::backend::{Autodiff, NdArray};
use polarity_core::{Example, Sentiment};
use polarity_data::ImdbDataset;
use polarity_finetune::{ClassifyBy, DataConfig, EncoderFineTune, ExperimentData, FinetuneError, LoraFineTune};
use polarity_llama::layers::lora::MAX_LORA_RANK;
use polarity_testkit::{CappedAllocator, expect_error, no_panic};
use polarity_train::{TrainError, TrainerConfig, Warmup};

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator::new(3 << 30);

type B = Autodiff<NdArray>;

const MISSING_MODEL: &str = "/no/such/model-directory";

fn data() -> ExperimentData {
    let reviews = |n: usize| {
        let examples =
            (0..n).map(|i| Example { text: format!("review {i}"), label: Sentiment::ALL[i % 2], rating: None });
        ImdbDataset::new("reviews", examples.collect()).unwrap()
    };
    ExperimentData::new(DataConfig::imdb(4, 2), reviews(4), None, reviews(2))
}

/// What `--flag value` does to the recipes' trainer settings, with the value each hostile flag carries.
/// A flag, what it does to the trainer's settings, and what the refusal must mention.
type FlagCase = (&'static str, Box<dyn Fn(TrainerConfig) -> TrainerConfig>, &'static str);

fn hostile_trainer_settings() -> Vec<FlagCase> {
    let max = usize::MAX;
    vec![
        (
            "--batch-size 18446744073709551615",
            Box::new(move |c| c.with_batch_size(max)),
            "batch_size 18446744073709551615",
        ),
        ("--batch-size 0", Box::new(|c| c.with_batch_size(0)), "batch_size 0"),
        ("--eval-batch-size 18446744073709551615", Box::new(move |c| c.with_eval_batch_size(max)), "eval_batch_size"),
        ("--grad-accum 18446744073709551615", Box::new(move |c| c.with_grad_accum(max)), "grad_accum"),
        ("--epochs 0", Box::new(|c| c.with_epochs(0)), "epochs 0"),
        ("--epochs 18446744073709551615", Box::new(move |c| c.with_epochs(max)), "epochs 18446744073709551615"),
        ("--lr -1", Box::new(|c| c.with_learning_rate(-1.0)), "learning rate -1"),
        ("--lr NaN", Box::new(|c| c.with_learning_rate(f64::NAN)), "learning rate NaN"),
        ("--lr inf", Box::new(|c| c.with_learning_rate(f64::INFINITY)), "learning rate inf"),
        ("--clip NaN", Box::new(|c| c.with_max_grad_norm(Some(f64::NAN))), "max_grad_norm NaN"),
        ("--clip inf", Box::new(|c| c.with_max_grad_norm(Some(f64::INFINITY))), "max_grad_norm inf"),
        ("--clip -1", Box::new(|c| c.with_max_grad_norm(Some(-1.0))), "max_grad_norm -1"),
        ("--warmup-ratio NaN", Box::new(|c| c.with_warmup(Warmup::Ratio(f64::NAN))), "warmup ratio NaN"),
        ("--warmup-ratio 2", Box::new(|c| c.with_warmup(Warmup::Ratio(2.0))), "warmup ratio 2"),
        ("--weight-decay NaN", Box::new(|c| c.with_weight_decay(f64::NAN)), "weight decay NaN"),
        ("--weight-decay -1", Box::new(|c| c.with_weight_decay(-1.0)), "weight decay -1"),
    ]
}

fn is_invalid_config(error: &FinetuneError) -> bool {
    matches!(error, FinetuneError::Train(inner) if matches!(**inner, TrainError::InvalidConfig(_)))
}

#[test]
fn hostile_trainer_flags_are_refused_before_anything_is_loaded() {
    let device = Default::default();
    for (flag, apply, needle) in hostile_trainer_settings() {
        let mut encoder = EncoderFineTune::new(MISSING_MODEL).with_max_length(32);
        encoder.trainer = apply(encoder.trainer.clone().with_progress(false));
        expect_error(flag, encoder.validate(), &[needle]);
        // The model does not exist: the setting is what is refused, first.
        let result = no_panic(flag, || encoder.run_on::<B>(&device, "ndarray", &data())).map(|_| ());
        let error = result.unwrap_err();
        assert!(is_invalid_config(&error), "{flag}: {error}");
        assert!(error.to_string().contains(needle), "{flag}: {error}");

        let mut lora = LoraFineTune::new("/no/such/model.gguf");
        lora.trainer = apply(lora.trainer.clone().with_progress(false));
        expect_error(flag, lora.validate(), &[needle]);
        let error = no_panic(flag, || lora.run_on::<B>(&device, "ndarray", &data())).map(|_| ()).unwrap_err();
        assert!(is_invalid_config(&error), "{flag}: {error}");
    }
}

#[test]
fn clip_zero_switches_clipping_off_and_nan_is_refused() {
    // The examples map `--clip 0` to no clipping; anything else goes to the trainer, which refuses NaN
    // instead of letting it disable clipping silently.
    let config = TrainerConfig::default().with_max_grad_norm(None);
    assert!(config.validate().is_ok());
    let nan = TrainerConfig::default().with_max_grad_norm(Some(f64::NAN));
    expect_error("--clip NaN", nan.validate(), &["max_grad_norm NaN", "finite"]);
}

#[test]
fn hostile_lora_flags_name_the_setting() {
    let device = Default::default();
    let with = |edit: &dyn Fn(&mut LoraFineTune)| {
        let mut recipe = LoraFineTune::new("/no/such/model.gguf");
        edit(&mut recipe);
        recipe
    };
    let cases: Vec<(&str, LoraFineTune, &[&str])> = vec![
        ("--lora-r 0", with(&|r| r.lora.r = 0), &["LoRA rank r 0"]),
        ("--lora-r 18446744073709551615", with(&|r| r.lora.r = usize::MAX), &["LoRA rank r 18446744073709551615"]),
        ("--lora-r 4097", with(&|r| r.lora.r = MAX_LORA_RANK + 1), &["LoRA rank r 4097"]),
        ("--lora-alpha 0", with(&|r| r.lora.lora_alpha = 0.0), &["lora_alpha 0"]),
        ("--lora-alpha -8", with(&|r| r.lora.lora_alpha = -8.0), &["lora_alpha -8"]),
        ("--lora-alpha NaN", with(&|r| r.lora.lora_alpha = f64::NAN), &["lora_alpha NaN"]),
        ("--lora-alpha inf", with(&|r| r.lora.lora_alpha = f64::INFINITY), &["lora_alpha inf"]),
        ("--lora-alpha 1e300", with(&|r| r.lora.lora_alpha = 1e300), &["lora_alpha"]),
        ("--lora-dropout 1", with(&|r| r.lora.lora_dropout = 1.0), &["lora_dropout 1"]),
        ("--lora-dropout -0.1", with(&|r| r.lora.lora_dropout = -0.1), &["lora_dropout -0.1"]),
        ("--lora-dropout NaN", with(&|r| r.lora.lora_dropout = f64::NAN), &["lora_dropout NaN"]),
        ("--max-length 0", with(&|r| r.max_length = 0), &["max_length = 0"]),
        (
            "--max-new-tokens 18446744073709551615",
            with(&|r| r.classify_by = ClassifyBy::Generation { max_new_tokens: usize::MAX }),
            &["max_new_tokens = 18446744073709551615"],
        ),
        (
            "--max-new-tokens 0",
            with(&|r| r.classify_by = ClassifyBy::Generation { max_new_tokens: 0 }),
            &["max_new_tokens = 0"],
        ),
    ];
    for (flag, recipe, needles) in cases {
        expect_error(flag, recipe.validate(), needles);
        // Refused before the (missing) model is looked for: the adapters' settings by the checks adapter files
        // get, the others as invalid settings.
        let error = no_panic(flag, || recipe.run_on::<B>(&device, "ndarray", &data())).map(|_| ()).unwrap_err();
        let refused_early = match &error {
            FinetuneError::InvalidSetting { .. } => true,
            FinetuneError::Llama { source, .. } => matches!(**source, polarity_llama::LlamaError::InvalidConfig(_)),
            _ => false,
        };
        assert!(refused_early, "{flag}: {error}");
    }
    assert!(LoraFineTune::new("model.gguf").validate().is_ok(), "the reference setup is valid");
}

#[test]
fn hostile_encoder_max_lengths_are_refused() {
    let device = Default::default();
    for max_length in [0, 1, 2] {
        let recipe = EncoderFineTune::new(MISSING_MODEL).with_max_length(max_length);
        let flag = format!("--max-length {max_length}");
        expect_error(&flag, recipe.validate(), &[&format!("max_length = {max_length}")]);
    }
    // Longer than the model's position embeddings (the tiny BERT fixture has 64): refused once the model is
    // loaded, before a batch could index past the table.
    let model = format!("{}/fixtures/tiny-bert-cls/model", common::SHARED);
    let mut recipe = EncoderFineTune::new(&model).with_max_length(65);
    recipe.trainer = recipe.trainer.clone().with_epochs(1).with_progress(false);
    let result = no_panic("--max-length 65", || recipe.run_on::<B>(&device, "ndarray", &data())).map(|_| ());
    expect_error("--max-length 65", result, &["max_length = 65", "max_position_embeddings 64"]);
    let result = no_panic("--max-length 18446744073709551615", || {
        recipe.clone().with_max_length(usize::MAX).run_on::<B>(&device, "ndarray", &data())
    });
    expect_error("--max-length usize::MAX", result.map(|_| ()), &["max_position_embeddings 64"]);
}

#[test]
fn hostile_data_sizes_are_refused_before_the_dataset_is_read() {
    let config = |train_size, validation_size, test_size| DataConfig {
        dataset: "/no/such/dataset".into(),
        train_size,
        validation_size,
        test_size,
        seed: 42,
    };
    let cases = [
        ("--train-size 0", config(0, 0, 2), "train_size = 0"),
        ("--test-size 0", config(2, 0, 0), "test_size = 0"),
        ("--train-size 18446744073709551615 --validation-size 1", config(usize::MAX, 1, 2), "validation_size = 1"),
    ];
    for (flags, config, needle) in cases {
        expect_error(flags, config.validate(), &[needle]);
        let error = no_panic(flags, || config.load()).map(|_| ()).unwrap_err();
        assert!(matches!(error, FinetuneError::InvalidSetting { .. }), "{flags}: {error}");
    }
    // A huge size alone is only known to be too large once the split is read: a typed error, not a capacity
    // overflow (the subset code reserves no more than the data holds).
    let reviews = data().train;
    let error = no_panic("--train-size 18446744073709551615", || reviews.balanced_subset(usize::MAX, 42)).unwrap_err();
    assert!(error.to_string().contains("18446744073709551615"), "{error}");
}
