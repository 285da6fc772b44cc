//! burn's two pure-Rust CPU backends, `NdArray<f32>` and `Flex<f32>`, compute the same MiniLM: both
//! match transformers' hidden states on the `minilm-imdb-128` fixture, and the same classifier (one
//! checkpoint, one head) gives the same logits on both. `polarity_core::backend::CpuBackend` may be
//! either, so both are checked; `benches/encoder.rs` measures which is faster.

use std::path::{Path, PathBuf};
use std::sync::Once;

use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use polarity::TokenBatch;
use polarity::hub::{RepoKind, RepoSource};
use polarity::reference::Fixture;
use polarity_encoder::EncoderClassifier;
use polarity_encoder::reference::{LOGITS_TOLERANCE, verify_on};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared");
const FIXTURE: &str = "minilm-imdb-128";

fn fixture_dir() -> PathBuf {
    Path::new(SHARED).join("fixtures").join(FIXTURE)
}

fn use_shared_hub_cache() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: every test here calls this first; `Once` blocks them until the variables are set,
        // and nothing writes the environment afterwards.
        unsafe {
            std::env::set_var("HF_HOME", Path::new(SHARED).join("hf"));
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
    });
}

fn token_batch<B: Backend>(fixture: &Fixture, device: &B::Device) -> TokenBatch<B> {
    let tensor = |name: &str| {
        let (shape, values) = fixture.i64(name).unwrap();
        Tensor::<B, 2, Int>::from_data(TensorData::new(values.to_vec(), [shape[0], shape[1]]), device)
    };
    let input_ids = tensor("input_ids");
    TokenBatch { attention_mask: tensor("attention_mask"), token_type_ids: input_ids.zeros_like(), input_ids }
}

fn logits<B: Backend>(model: &EncoderClassifier<B>, fixture: &Fixture) -> Vec<f32> {
    model.forward(token_batch(fixture, &Default::default())).into_data().iter::<f32>().collect()
}

#[test]
fn both_cpu_backends_match_transformers_on_minilm() {
    use_shared_hub_cache();
    for (backend, checks) in [
        ("ndarray", verify_on::<Autodiff<NdArray<f32>>>(&fixture_dir(), None, &Default::default()).unwrap()),
        ("flex", verify_on::<Autodiff<Flex<f32>>>(&fixture_dir(), None, &Default::default()).unwrap()),
    ] {
        assert_eq!(checks.len(), 3, "{backend}: hidden states, pooler, mean-pooled embeddings");
        for check in &checks {
            println!("{backend}: {check}");
            assert!(check.ok, "{backend}: {check}");
        }
    }
}

#[test]
fn both_cpu_backends_give_the_same_minilm_logits() {
    use_shared_hub_cache();
    let fixture = Fixture::open(fixture_dir()).unwrap();
    let model_id = fixture.meta["model_id"].as_str().expect("meta.json names the model");

    // One classifier (checkpoint weights and a seeded fresh head) on ndarray, written out and read
    // back on flex, so both backends hold identical parameters.
    let device = Default::default();
    NdArray::<f32>::seed(&device, 7);
    let ndarray =
        EncoderClassifier::<NdArray<f32>>::from_pretrained(&RepoSource::parse(model_id, RepoKind::Model), &device)
            .unwrap();
    let dir = std::env::temp_dir().join(format!("polarity-cpu-backends-{}", std::process::id()));
    ndarray.save_pretrained(&dir, &[]).unwrap();
    let flex = EncoderClassifier::<Flex<f32>>::from_pretrained(&RepoSource::Local(dir.clone()), &Default::default());
    std::fs::remove_dir_all(&dir).unwrap();
    let flex = flex.unwrap();

    let (a, b) = (logits(&ndarray, &fixture), logits(&flex, &fixture));
    assert_eq!(a.len(), 16, "[8 reviews, 2 classes]");
    let max_abs = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    println!("ndarray vs flex logits: max |diff| = {max_abs:e}");
    assert!(f64::from(max_abs) <= LOGITS_TOLERANCE, "ndarray {a:?} vs flex {b:?}: max |diff| {max_abs}");
}
