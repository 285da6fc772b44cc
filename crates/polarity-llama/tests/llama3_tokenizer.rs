//! The Llama-3 tokenizer from both of its sources, Meta-Llama-3-8B-Instruct's `tokenizer.json` by hub
//! id and llama.cpp's vocabulary-only GGUF (`tokenizer.ggml.pre` = `llama-bpe`), against llama.cpp's
//! own tokenizer test vectors and against each other on IMDB prompts; the `tokenizer-ids` fixture kind.

use std::path::Path;
use std::sync::OnceLock;

use polarity_data::{Split, hub};
use polarity_hub::{RepoKind, RepoSource};
use polarity_llama::gguf::{GgufFile, GgufValue};
use polarity_llama::reference::{TOKEN_IDS_KIND, verify, verify_token_ids};
use polarity_llama::{GgufPreTokenizer, LLAMA3_SPLIT_REGEX, LlamaError, LlamaTokenizer};
use polarity_tokenize::PromptTemplate;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");
const VOCAB_GGUF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/ggml-vocab-llama-bpe.gguf");
const SMOLLM2_GGUF: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf");
const LLAMA3: &str = "meta-llama/Meta-Llama-3-8B-Instruct";
const BEGIN_OF_TEXT: u32 = 128_000;

fn use_shared_cache() {
    // SAFETY: every test of this binary sets the same values before reading them, as the other
    // hub-cache tests of the workspace do.
    unsafe {
        std::env::set_var("HF_HOME", format!("{SHARED}/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
}

/// The tokenizer.json by hub id, loaded once (280,147 merges take a while in the dev profile).
fn hub_tokenizer() -> &'static LlamaTokenizer {
    static TOKENIZER: OnceLock<LlamaTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        use_shared_cache();
        LlamaTokenizer::from_pretrained(&RepoSource::parse(LLAMA3, RepoKind::Model)).expect("the hub tokenizer loads")
    })
}

fn gguf_tokenizer() -> &'static LlamaTokenizer {
    static TOKENIZER: OnceLock<LlamaTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        LlamaTokenizer::from_gguf(&GgufFile::open(VOCAB_GGUF).unwrap()).expect("the GGUF tokenizer loads")
    })
}

/// llama.cpp's test vectors, read as tests/test-tokenizer-0.cpp reads them: `.inp` is split on
/// `"\n__ggml_vocab_test__\n"` (the newlines belong to the separator, so a text keeps its own leading
/// and trailing whitespace) and reading stops at the end of the file, so the separator that ends the
/// file closes the last text rather than opening an empty one; `.out` has one line per text.
fn llama_cpp_cases() -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(format!("{VOCAB_GGUF}.inp")).unwrap();
    let out = std::fs::read_to_string(format!("{VOCAB_GGUF}.out")).unwrap();
    let separator = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut rest = inp.as_str();
    while !rest.is_empty() {
        match rest.split_once(separator) {
            Some((text, after)) => {
                texts.push(text.to_string());
                rest = after;
            }
            None => {
                texts.push(rest.to_string());
                rest = "";
            }
        }
    }
    let ids: Vec<Vec<u32>> =
        out.lines().map(|line| line.split_whitespace().map(|id| id.parse().unwrap()).collect()).collect();
    assert_eq!(texts.len(), ids.len(), ".inp and .out disagree on the number of cases");
    texts.into_iter().zip(ids).collect()
}

#[test]
fn llama_cpp_cases_are_split_as_llama_cpp_splits_them() {
    let cases = llama_cpp_cases();
    assert_eq!(cases.len(), 46);
    assert_eq!(cases[0], ("ied 4 ½ months".to_string(), vec![1142, 220, 19, 220, 27154, 4038]));
    assert_eq!(cases[2], (String::new(), vec![]));
    assert_eq!(cases[3], (" ".to_string(), vec![220]));
    assert_eq!(cases[7], ("\n".to_string(), vec![198]));
    assert_eq!(cases[10], ("\t\n".to_string(), vec![1602]));
    let (last, last_ids) = cases.last().unwrap();
    assert!(last.starts_with("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal)"), "{last:?}");
    assert!(last.ends_with("We'Ve a'lL"), "{last:?}");
    assert_eq!(&last_ids[..2], [198, 4815]);
    assert!(cases.iter().all(|(text, _)| !text.contains("__ggml_vocab_test__")));
}

/// The texts whose ids differ, with both id lists, for a readable failure.
fn mismatches(tokenizer: &LlamaTokenizer, cases: &[(String, Vec<u32>)]) -> Vec<(String, Vec<u32>, Vec<u32>)> {
    cases
        .iter()
        .map(|(text, expected)| (text.clone(), tokenizer.encode_with(text, false).unwrap(), expected.clone()))
        .filter(|(_, ours, expected)| ours != expected)
        .collect()
}

#[test]
fn the_hub_tokenizer_json_gives_llama_cpp_reference_ids() {
    let cases = llama_cpp_cases();
    assert_eq!(mismatches(hub_tokenizer(), &cases), vec![], "of {} cases", cases.len());
}

#[test]
fn the_gguf_vocabulary_gives_llama_cpp_reference_ids() {
    let cases = llama_cpp_cases();
    assert_eq!(mismatches(gguf_tokenizer(), &cases), vec![], "of {} cases", cases.len());
}

#[test]
fn gpt2_s_split_on_the_llama3_vocabulary_misses_cases() {
    // The reference cases tell the split regexes apart: the test above is not vacuous.
    let mut gguf = GgufFile::open(VOCAB_GGUF).unwrap();
    gguf.metadata.insert("tokenizer.ggml.pre".into(), GgufValue::String("gpt-2".into()));
    let gpt2 = LlamaTokenizer::from_gguf(&gguf).unwrap();
    let missed = mismatches(&gpt2, &llama_cpp_cases());
    assert!(missed.iter().any(|(text, _, _)| text == "3333"), "{missed:?}");
}

#[test]
fn the_vocabulary_gguf_has_no_tensors_and_the_llama_bpe_pre_tokenizer() {
    let gguf = GgufFile::open(VOCAB_GGUF).unwrap();
    assert!(gguf.tensors.is_empty());
    assert_eq!(GgufPreTokenizer::of(&gguf).unwrap(), GgufPreTokenizer::Llama3);
    let smollm2 = GgufFile::open(SMOLLM2_GGUF).unwrap();
    assert_eq!(smollm2.str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(GgufPreTokenizer::of(&smollm2).unwrap(), GgufPreTokenizer::SmolLm);
}

#[test]
fn the_split_regex_is_the_one_in_the_tokenizer_json() {
    use_shared_cache();
    let path = RepoSource::parse(LLAMA3, RepoKind::Model).file("tokenizer.json").unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pre_tokenizers = json["pre_tokenizer"]["pretokenizers"].as_array().unwrap();
    assert_eq!(pre_tokenizers[0]["type"], "Split");
    assert_eq!(pre_tokenizers[0]["pattern"]["Regex"], LLAMA3_SPLIT_REGEX);
    assert_eq!(pre_tokenizers[1]["type"], "ByteLevel");
    assert_eq!(pre_tokenizers[1]["use_regex"], false);
}

#[test]
fn both_sources_prepend_begin_of_text_only_when_asked() {
    for tokenizer in [hub_tokenizer(), gguf_tokenizer()] {
        assert_eq!(tokenizer.bos_token_id, Some(BEGIN_OF_TEXT));
        assert!(tokenizer.add_bos_token);
        assert_eq!(tokenizer.encode("Hello world").unwrap(), [BEGIN_OF_TEXT, 9906, 1917]);
        assert_eq!(tokenizer.encode_with("Hello world", false).unwrap(), [9906, 1917]);
        // Special-token text is one token, and decoding inverts encoding.
        let chat = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
        let ids = tokenizer.encode_with(chat, false).unwrap();
        assert_eq!((ids[0], *ids.last().unwrap()), (128_006, 128_009));
        assert_eq!(tokenizer.decode(&ids).unwrap(), chat);
    }
}

#[test]
fn both_sources_agree_on_imdb_prompts() {
    use_shared_cache();
    let test = hub::load_split(hub::IMDB_REPO, Split::Test).unwrap();
    let texts = test.texts();
    // Evenly spaced: the split is sorted by label, so this takes reviews of both.
    let reviews: Vec<&str> = texts.iter().step_by(texts.len() / 20).take(20).copied().collect();
    assert_eq!(reviews.len(), 20);
    let template = PromptTemplate::default();
    for review in reviews {
        let prompt = template.render(review);
        let from_hub = hub_tokenizer().encode(&prompt).unwrap();
        assert_eq!(from_hub[0], BEGIN_OF_TEXT);
        assert_eq!(gguf_tokenizer().encode(&prompt).unwrap(), from_hub, "{prompt:?}");
    }
}

/// The vocabulary GGUF with `tokenizer.ggml.pre` changed to `value` (same length, so every offset
/// after it stays valid).
fn with_pre_tokenizer(value: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(VOCAB_GGUF).unwrap();
    let mut entry = b"tokenizer.ggml.pre".to_vec();
    entry.extend(8u32.to_le_bytes()); // string
    entry.extend(9u64.to_le_bytes());
    let at =
        bytes.windows(entry.len()).position(|window| window == entry).expect("the key is in the file") + entry.len();
    assert_eq!(&bytes[at..at + 9], b"llama-bpe");
    assert_eq!(value.len(), 9);
    bytes[at..at + 9].copy_from_slice(value.as_bytes());
    bytes
}

#[test]
fn an_unknown_pre_tokenizer_is_refused_with_its_name_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unknown-pre.gguf");
    std::fs::write(&path, with_pre_tokenizer("llama-bpX")).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    assert_eq!(gguf.str("tokenizer.ggml.pre").unwrap(), "llama-bpX");
    let error = LlamaTokenizer::from_gguf(&gguf).unwrap_err();
    let message = error.to_string();
    match error {
        LlamaError::GgufUnknownPreTokenizer { file, pre, known } => {
            assert_eq!(pre, "llama-bpX");
            assert_eq!(file, path.display().to_string());
            assert!(known.contains("llama-bpe") && known.contains("smollm"), "{known}");
        }
        other => panic!("expected GgufUnknownPreTokenizer, got {other:?}"),
    }
    assert!(message.contains("llama-bpX") && message.contains("unknown-pre.gguf"), "{message}");
}

/// A `tokenizer-ids` fixture of the llama.cpp cases, `gguf` given relative to the shared directory.
fn write_fixture(dir: &Path, add_special_tokens: bool, corrupt: bool) {
    let mut cases: Vec<serde_json::Value> = llama_cpp_cases()
        .into_iter()
        .map(|(text, mut ids)| {
            if add_special_tokens {
                ids.insert(0, BEGIN_OF_TEXT);
            }
            serde_json::json!({ "text": text, "ids": ids })
        })
        .collect();
    if corrupt {
        cases[11]["ids"][1] = 1.into();
    }
    let meta = serde_json::json!({
        "kind": TOKEN_IDS_KIND,
        "tokenizer": LLAMA3,
        "gguf": "models/ggml-vocab-llama-bpe.gguf",
        "add_special_tokens": add_special_tokens,
        "cases": cases,
    });
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta).unwrap()).unwrap();
}

#[test]
fn a_tokenizer_ids_fixture_passes_for_both_sources() {
    use_shared_cache();
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), false, false);
    // Through the dispatch that verify_reference uses: no reference.safetensors is needed.
    let checks = verify(dir.path(), None).unwrap();
    let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["tokenizer_json 0.000e0 0e0 ok", "gguf 0.000e0 0e0 ok"]);
}

#[test]
fn a_wrong_id_fails_each_source_with_error_one() {
    use_shared_cache();
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), true, true);
    let checks = verify_token_ids(dir.path(), None).unwrap();
    let lines: Vec<String> = checks.iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["tokenizer_json 1.000e0 0e0 FAIL", "gguf 1.000e0 0e0 FAIL"]);

    // A GGUF that is not there is named, with the places it was looked for.
    let meta_path = dir.path().join("meta.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap().replace("ggml-vocab-llama-bpe.gguf", "missing.gguf");
    std::fs::write(&meta_path, meta).unwrap();
    let error = verify_token_ids(dir.path(), None).unwrap_err().to_string();
    assert!(error.contains("missing.gguf") && error.contains("tried"), "{error}");
}
