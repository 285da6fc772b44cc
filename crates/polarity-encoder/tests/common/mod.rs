//! Helpers shared by the integration tests: paths into `../shared`, fixture inputs as tensors.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::sync::Once;

use burn::prelude::*;
use polarity_core::reference::{Fixture, TensorCheck};
use polarity_core::{LabelledBatch, TokenBatch};

/// burn's default CPU backend (ndarray), and the same with autodiff.
pub type Cpu = polarity_core::backend::CpuBackend;
pub type Train = burn::backend::Autodiff<Cpu>;
/// burn's flex backend: several times faster than ndarray in the dev profile, used for MiniLM.
pub type Fast = polarity_core::backend::FlexBackend;

/// The shared assets directory, beside the workspace.
pub const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(SHARED).join("fixtures").join(name)
}

pub fn fixture(name: &str) -> Fixture {
    Fixture::open(fixture_dir(name)).expect("the shared fixture should be readable")
}

/// Points the hub cache at `shared/hf` and forbids downloads, once per test binary, before any test
/// of the binary reads the environment.
pub fn use_shared_hub_cache() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: every test that touches the hub calls this first; `Once` blocks them until the
        // variables are set, and nothing writes the environment afterwards.
        unsafe {
            std::env::set_var("HF_HOME", Path::new(SHARED).join("hf"));
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
    });
}

fn int_tensor<B: Backend>(fixture: &Fixture, name: &str, device: &B::Device) -> Tensor<B, 2, Int> {
    let (shape, values) = fixture.i64(name).unwrap();
    Tensor::from_data(TensorData::new(values.to_vec(), [shape[0], shape[1]]), device)
}

/// The fixture's inputs; `token_type_ids` are zero when the fixture has none.
pub fn token_batch<B: Backend>(fixture: &Fixture, device: &B::Device) -> TokenBatch<B> {
    let input_ids = int_tensor(fixture, "input_ids", device);
    let token_type_ids = if fixture.names().contains(&"token_type_ids") {
        int_tensor(fixture, "token_type_ids", device)
    } else {
        input_ids.zeros_like()
    };
    TokenBatch { attention_mask: int_tensor(fixture, "attention_mask", device), input_ids, token_type_ids }
}

pub fn labelled_batch<B: Backend>(fixture: &Fixture, device: &B::Device) -> LabelledBatch<B> {
    let (_, labels) = fixture.i64("labels").unwrap();
    let labels = Tensor::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device);
    LabelledBatch { tokens: token_batch(fixture, device), labels }
}

pub fn values<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    tensor.into_data().iter::<f32>().collect()
}

/// Prints every check (visible with `--nocapture`) and fails on the first that is not ok.
pub fn assert_all_ok(checks: &[TensorCheck]) {
    for check in checks {
        println!("{check}");
    }
    for check in checks {
        assert!(check.ok, "{check}");
    }
}
