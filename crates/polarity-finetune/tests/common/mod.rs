//! What the recipe tests share: the shared assets and the offline hub cache.

// Each test binary uses only some of these.
#![allow(dead_code)]

/// `../shared` beside the repository.
pub const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared");
/// The hub id of Meta-Llama-3-8B-Instruct (config.json and tokenizer in the shared cache, no weights).
pub const LLAMA3: &str = "meta-llama/Meta-Llama-3-8B-Instruct";

/// Points the hub cache at `../shared/hf`, offline.
pub fn use_shared_cache() {
    // SAFETY: every test of a binary sets the same values before reading them, as the other hub-cache tests
    // of the workspace do.
    unsafe {
        std::env::set_var("HF_HOME", format!("{SHARED}/hf"));
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
}

pub mod tiny;
