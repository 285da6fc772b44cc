//! The answer-only objective: parity with PEFT's answer-only loss on the `tiny-llama` fixture, LoRA
//! training through polarity's trainer, and prompt encoding.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use polarity_core::Sentiment;
use polarity_core::reference::{Fixture, TensorCheck, Tolerance};
use polarity_finetune::{CausalLmObjective, answer_loss};
use polarity_hub::RepoSource;
use polarity_llama::reference::{GRADIENT_TOLERANCE, LOSS_TOLERANCE};
use polarity_llama::{IGNORE_INDEX, LabelWords, Llama, LlamaError, LlamaTokenizer, LoraConfig, PromptEncoder};
use polarity_tokenize::{Encode, PromptTemplate, TokenIds, TokenizeError, TokenizedExample};
use polarity_train::{Trainer, TrainerConfig, Warmup, evaluate};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/tiny-llama");
const SMOLLM2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");

type Cpu = NdArray<f32>;
type Train = Autodiff<Cpu>;

fn load_base<B: Backend>() -> Llama<B> {
    Llama::from_pretrained(&RepoSource::Local(Path::new(FIXTURE).join("model")), &Default::default()).unwrap()
}

/// The fixture's rows split into prompt (tokens before the labelled one) and answer (the labelled token).
fn prompts_and_answers(fixture: &Fixture) -> (Vec<Vec<u32>>, Vec<u32>) {
    let (shape, ids) = fixture.i64("input_ids").unwrap();
    let (_, labels) = fixture.i64("lora_labels").unwrap();
    let width = shape[1];
    let mut prompts = Vec::new();
    let mut answers = Vec::new();
    for (row, labels) in ids.chunks(width).zip(labels.chunks(width)) {
        let labelled: Vec<usize> = (0..width).filter(|&i| labels[i] != IGNORE_INDEX).collect();
        assert_eq!(labelled.len(), 1, "one answer token per row");
        let position = labelled[0];
        prompts.push(row[..position].iter().map(|&id| id as u32).collect());
        answers.push(labels[position] as u32);
    }
    (prompts, answers)
}

#[test]
fn answer_loss_and_gradients_match_peft() {
    let fixture = Fixture::open(FIXTURE).unwrap();
    let (prompts, answers) = prompts_and_answers(&fixture);
    let (model, _) = load_base::<Train>().load_lora(&RepoSource::Local(Path::new(FIXTURE).join("adapter"))).unwrap();
    let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let loss = answer_loss(&model, &rows, &answers, 0, &Default::default()).unwrap();

    let (_, reference) = fixture.f32("lora_loss").unwrap();
    let check = TensorCheck::compare(
        "lora_loss",
        &loss.to_data().to_vec::<f32>().unwrap(),
        reference,
        LOSS_TOLERANCE,
        Tolerance::Absolute,
    );
    println!("{check}");
    assert!(check.ok, "{check}");

    let gradients = model.lora_gradients(&loss.backward());
    for reference_name in fixture.names().into_iter().filter(|n| n.starts_with("grad.")) {
        let (_, grad) = gradients.iter().find(|(name, _)| *name == reference_name["grad.".len()..]).unwrap();
        let (_, reference) = fixture.f32(reference_name).unwrap();
        let check = TensorCheck::compare(
            reference_name,
            &grad.clone().convert::<f32>().into_vec::<f32>().unwrap(),
            reference,
            GRADIENT_TOLERANCE,
            Tolerance::Relative,
        );
        println!("{check}");
        assert!(check.ok, "{check}");
    }
}

#[test]
fn answer_loss_rejects_bad_batches() {
    let model = load_base::<Cpu>();
    let device = Default::default();
    let prompt: &[u32] = &[1, 2, 3];
    assert!(
        answer_loss(&model, &[prompt], &[1, 2], 0, &device)
            .unwrap_err()
            .to_string()
            .contains("1 prompts but 2 answers")
    );
    assert!(
        answer_loss(&model, &[prompt], &[100_000], 0, &device)
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary")
    );
    assert!(answer_loss(&model, &[&[][..]], &[1], 0, &device).unwrap_err().to_string().contains("no tokens"));
    assert!(answer_loss(&model, &[], &[], 0, &device).unwrap_err().to_string().contains("empty batch"));
}

/// A toy task the random tiny model cannot do before training: the label is given by one cue token in
/// the middle of a random prompt, and the answer is one of two label-word tokens.
fn toy_examples(count: usize, seed: u64) -> Vec<TokenizedExample> {
    let mut state = seed;
    let mut next = move |bound: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    (0..count)
        .map(|i| {
            let label = if i % 2 == 0 { Sentiment::Positive } else { Sentiment::Negative };
            let cue = if label == Sentiment::Positive { 7 } else { 9 };
            let length = 6 + next(6) as usize;
            let mut ids: Vec<u32> = (0..length).map(|_| 20 + next(400) as u32).collect();
            ids[length / 2] = cue;
            TokenizedExample { tokens: TokenIds { type_ids: vec![0; ids.len()], ids }, label }
        })
        .collect()
}

#[test]
fn lora_training_with_the_trainer_learns_and_leaves_the_base_frozen() {
    let device = Default::default();
    let base = load_base::<Train>();
    let frozen_before = base.model.layers[0].mlp.up_proj.base_layer.as_dense().unwrap().weight.val().into_data();
    let model = base.with_lora(&LoraConfig::new(8, 16.0)).unwrap();
    let objective = CausalLmObjective::new(LabelWords { negative: 11, positive: 12 }, 0);
    let train = toy_examples(64, 1);
    let test = toy_examples(32, 2);

    let before = evaluate(&objective, &model.inference(), &test, 16, &device).unwrap();
    let config = TrainerConfig::default()
        .with_epochs(15)
        .with_batch_size(8)
        .with_grad_accum(2)
        .with_learning_rate(2e-2)
        .with_weight_decay(0.0)
        .with_warmup(Warmup::Steps(2))
        .with_progress(false);
    let outcome = Trainer::<Train>::new(config, device).fit(model, &objective, &train, Some(&test)).unwrap();
    let first = outcome.history.first().unwrap().train_loss;
    let last = outcome.history.last().unwrap().train_loss;
    let after = evaluate(&objective, &outcome.model.inference(), &test, 16, &device).unwrap();
    println!("accuracy {} -> {}, train loss {first:.3} -> {last:.3}", before.report.accuracy, after.report.accuracy);
    // Full-vocabulary cross-entropy starts at ln(512) = 6.2; adapters on q/v of a random 2-layer model
    // move it slowly, but enough to rank the right label word first.
    assert!(last < first - 0.5, "train loss {first} -> {last}");
    assert!(after.report.accuracy >= 0.9, "accuracy after LoRA training: {}", after.report.accuracy);

    let frozen_after =
        outcome.model.model.layers[0].mlp.up_proj.base_layer.as_dense().unwrap().weight.val().into_data();
    assert_eq!(frozen_before, frozen_after, "LoRA training must not touch the base weights");
}

fn smollm2_tokenizer() -> Option<LlamaTokenizer> {
    let path = PathBuf::from(SMOLLM2);
    if !path.exists() {
        eprintln!("skipped: {} is absent", path.display());
        return None;
    }
    let gguf = polarity_llama::gguf::GgufFile::open(&path).unwrap();
    Some(LlamaTokenizer::from_gguf(&gguf).unwrap())
}

#[test]
fn prompts_fit_and_keep_the_answer_cue() {
    let Some(tokenizer) = smollm2_tokenizer() else { return };
    let cue = tokenizer.encode("\n\nAnswer (positive or negative):").unwrap();
    let encoder = PromptEncoder::new(tokenizer.clone(), PromptTemplate::default(), 96).unwrap();
    let long = "An endless film that never finds its story. ".repeat(40);
    let reviews = ["Short and sweet.", long.as_str()];
    let prompts = encoder.encode_batch(&reviews).unwrap();
    assert!(prompts[0].len() < 96);
    assert_eq!(prompts[1].len(), 96, "the long review fills the budget exactly");
    for prompt in &prompts {
        assert!(prompt.ids.ends_with(&cue[cue.len() - 4..]), "the answer cue survives shortening");
    }
    assert_eq!(encoder.count_shortened(&reviews).unwrap(), 1);
    // The whole prompt of the short review is the rendered template.
    assert_eq!(prompts[0].ids, tokenizer.encode(&PromptTemplate::default().render("Short and sweet.")).unwrap());

    match PromptEncoder::new(tokenizer, PromptTemplate::default(), 10) {
        Err(LlamaError::Prompt(TokenizeError::PromptTooLong { template_tokens, max_length: 10 })) => {
            assert!(template_tokens >= 10)
        }
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
}
