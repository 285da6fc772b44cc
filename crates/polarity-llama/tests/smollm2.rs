//! Parity with transformers on the `smollm2-zero-shot` fixture: SmolLM2-135M-Instruct read from its
//! Q4_1 GGUF file (dequantised), its tokenizer rebuilt from GGUF metadata, IMDB prompts.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use burn::backend::Flex;
use polarity_core::Sentiment;
use polarity_core::reference::Fixture;
use polarity_llama::gguf::GgufFile;
use polarity_llama::{LabelWords, Llama, LlamaConfig, LlamaTokenizer, parse_answer};
use polarity_tokenize::PaddingBatcher;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/smollm2-zero-shot");
const GGUF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");

/// burn's flex backend: the same numbers as ndarray, and about twice as fast on this model in the dev
/// profile (ndarray's broadcasting element-wise ops dominate its time here).
type Cpu = Flex<f32>;

fn fixture() -> &'static Fixture {
    static FIXTURE_DATA: OnceLock<Fixture> = OnceLock::new();
    FIXTURE_DATA.get_or_init(|| Fixture::open(FIXTURE).expect("the smollm2 fixture is readable"))
}

/// The model is loaded once for all tests of this file (dequantising 135M weights takes a while).
fn model() -> &'static (Llama<Cpu>, LlamaTokenizer) {
    static MODEL: OnceLock<(Llama<Cpu>, LlamaTokenizer)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let start = Instant::now();
        let loaded = Llama::from_gguf(Path::new(GGUF), &Default::default()).expect("the GGUF model loads");
        println!("loaded the GGUF model in {:.1}s", start.elapsed().as_secs_f64());
        loaded
    })
}

fn prompts() -> Vec<&'static str> {
    fixture().meta["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect()
}

/// The fixture's prompt ids, unpadded.
fn reference_prompt_ids() -> Vec<Vec<u32>> {
    let (shape, ids) = fixture().i64("prompt_ids").unwrap();
    let (_, lengths) = fixture().i64("prompt_lengths").unwrap();
    ids.chunks(shape[1])
        .zip(lengths)
        .map(|(row, &len)| row[..len as usize].iter().map(|&id| id as u32).collect())
        .collect()
}

#[test]
fn gguf_config_is_smollm2() {
    let gguf = GgufFile::open(GGUF).unwrap();
    assert_eq!(gguf.version, 3);
    let config = LlamaConfig::from_gguf(&gguf).unwrap();
    assert_eq!(
        (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads),
        (30, 576, 9, 3)
    );
    assert_eq!((config.intermediate_size, config.vocab_size, config.resolved_head_dim()), (1536, 49_152, 64));
    assert_eq!(config.rope_theta, 100_000.0);
    assert!(config.tie_word_embeddings);
    assert!(config.rope_scaling.is_none());
}

#[test]
fn gguf_tokenizer_reproduces_the_prompt_ids() {
    let tokenizer = LlamaTokenizer::from_gguf(&GgufFile::open(GGUF).unwrap()).unwrap();
    let ours: Vec<Vec<u32>> = prompts().iter().map(|p| tokenizer.encode(p).unwrap()).collect();
    assert_eq!(ours, reference_prompt_ids());

    let labels = LabelWords::from_tokenizer(&tokenizer).unwrap();
    let meta = &fixture().meta["label_token_ids"];
    assert_eq!(labels.positive as u64, meta["positive"][0].as_u64().unwrap());
    assert_eq!(labels.negative as u64, meta["negative"][0].as_u64().unwrap());

    // The reference continuation decodes to transformers' text, and decoding inverts encoding.
    let text = fixture().meta["greedy"]["text"].as_str().unwrap();
    let (_, greedy_ids) = fixture().i64("greedy_ids").unwrap();
    assert_eq!(tokenizer.decode(&greedy_ids.iter().map(|&id| id as u32).collect::<Vec<_>>()).unwrap(), text);
    assert_eq!(tokenizer.decode(&tokenizer.encode(text).unwrap()).unwrap(), text);
    let chat = "<|im_start|>user\nHi<|im_end|>";
    let ids = tokenizer.encode(chat).unwrap();
    assert_eq!(ids[0], tokenizer.token_to_id("<|im_start|>").unwrap());
    assert_eq!(tokenizer.decode(&ids).unwrap(), chat);
}

#[test]
fn the_smollm_pre_tokenizer_isolates_numeric_characters_as_llama_cpp_does() {
    let gguf = GgufFile::open(GGUF).unwrap();
    assert_eq!(gguf.str("tokenizer.ggml.pre").unwrap(), "smollm");
    let tokenizer = LlamaTokenizer::from_gguf(&gguf).unwrap();
    let tokens = |text: &str| -> Vec<String> {
        let ids = tokenizer.encode(text).unwrap();
        ids.iter().map(|&id| tokenizer.inner().id_to_token(id).unwrap()).collect()
    };
    // From an IMDB review; GPT-2's split alone (transformers' GGUF converter) gives "ĠÂ", "½".
    assert_eq!(tokens(" about ½ mile"), ["Ġabout", "Ġ", "Â½", "Ġmile"]);
    assert_eq!(tokens(" rated 10/10"), ["Ġrated", "Ġ", "1", "0", "/", "1", "0"]);
}

#[test]
fn verify_matches_transformers_logits_label_scores_and_greedy_continuation() {
    let start = Instant::now();
    let checks = polarity_llama::reference::verify_on::<Cpu>(Path::new(FIXTURE), None, &Default::default()).unwrap();
    println!("verified in {:.1}s", start.elapsed().as_secs_f64());
    for check in &checks {
        println!("{check}");
    }
    let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["prompt_ids", "prompt_lengths", "label_token_ids", "last_logits", "label_scores", "greedy_ids"]);
    assert!(checks.iter().all(|c| c.ok));
}

#[test]
fn batched_generation_answers_like_one_prompt_at_a_time() {
    let (model, tokenizer) = model();
    let device = Default::default();
    let prompts =
        ["The capital of France is", "Classify the sentiment of \"I loved it\" as positive or negative. Answer:"];
    let encoded: Vec<Vec<u32>> = prompts.iter().map(|p| tokenizer.encode(p).unwrap()).collect();
    let batched = model.generate_greedy(&encoded, 3, tokenizer.eos_token_id, &device);
    for (prompt, batched) in encoded.iter().zip(&batched) {
        let alone = model.generate_greedy(std::slice::from_ref(prompt), 3, tokenizer.eos_token_id, &device);
        assert_eq!(&alone[0], batched);
    }
    // Label-word scoring gathers the label words' logits after each row's last real token.
    let label_words = LabelWords::from_tokenizer(tokenizer).unwrap();
    let batch = PaddingBatcher::new(0).pad_ids::<Cpu, _>(&encoded, &device);
    let scores = label_words.scores(model, &encoded, &device).into_data().to_vec::<f32>().unwrap();
    let logits = model.last_token_logits(batch.input_ids, batch.attention_mask).into_data().to_vec::<f32>().unwrap();
    let vocab = logits.len() / 2;
    for row in 0..2 {
        let expected = label_words.ids().map(|id| logits[row * vocab + id as usize]);
        assert_eq!(scores[2 * row..2 * row + 2], expected);
    }

    let answers = polarity_llama::generate_answers(model, tokenizer, &prompts, 3, &device).unwrap();
    assert_eq!(answers.texts.len(), 2);
    assert_eq!(answers.answers, answers.texts.iter().map(|t| parse_answer(t)).collect::<Vec<_>>());
    assert_eq!(answers.unparseable, answers.answers.iter().filter(|a| a.is_none()).count());
    // "Paris" names no sentiment.
    assert_eq!(answers.answers[0], None::<Sentiment>);
}
