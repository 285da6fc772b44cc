//! Data pipeline throughput: loading both IMDB splits with polars, and tokenizing 25k reviews.
//!
//! ```text
//! HF_HOME=../shared/hf HF_HUB_OFFLINE=1 cargo bench --bench data_pipeline
//! ```
//! Tokenization is reported in reviews/s (criterion's `elem/s`).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use polarity::data::{Split, hub};
use polarity::tokenize::{Encode, HfTokenizer};

const TOKENIZER: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn load_splits(c: &mut Criterion) {
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.throughput(Throughput::Elements(50_000));
    group.bench_function("imdb_train_and_test_parquet", |b| {
        b.iter(|| {
            let train = hub::load_split(hub::IMDB_REPO, Split::Train).expect("train split in the hub cache");
            let test = hub::load_split(hub::IMDB_REPO, Split::Test).expect("test split in the hub cache");
            (train, test)
        })
    });
    group.finish();
}

fn tokenize(c: &mut Criterion) {
    let train = hub::load_split(hub::IMDB_REPO, Split::Train).expect("train split in the hub cache");
    let texts = train.texts();
    let mut group = c.benchmark_group("tokenize");
    group.sample_size(10);
    group.throughput(Throughput::Elements(texts.len() as u64));
    for max_length in [256, 512] {
        let tokenizer = HfTokenizer::from_pretrained(TOKENIZER, max_length).expect("MiniLM tokenizer in the hub cache");
        group.bench_function(format!("minilm_25k_reviews_max{max_length}"), |b| {
            b.iter(|| tokenizer.encode_batch(&texts).expect("IMDB reviews encode"))
        });
    }
    group.finish();
}

criterion_group!(benches, load_splits, tokenize);
criterion_main!(benches);
