//! The comparison end to end on tiny rows: MiniLM fully fine-tuned and SmolLM2 with QLoRA on a few real
//! IMDB reviews, saved, resumed and rendered.

use polarity_bench::HardwareRecord;
use polarity_bench::compare::{
    InferenceSpec, NO_WEIGHTS, Plan, Preset, PresetOptions, ReferenceResults, ReferenceRow, ResultsDir, RowOutcome,
    RowSpec, run_row,
};
use polarity_core::Precision;
use polarity_data::{Split, hub};
use polarity_finetune::{DataConfig, EncoderFineTune, LoraFineTune, RecipeConfig, WeightInit};

fn minilm_row() -> RowSpec {
    let mut recipe = EncoderFineTune::new("sentence-transformers/all-MiniLM-L6-v2").with_max_length(32);
    recipe.trainer = recipe.trainer.with_epochs(1).with_batch_size(8).with_learning_rate(5e-5).with_progress(false);
    RowSpec {
        name: "minilm".into(),
        recipe: RecipeConfig::Encoder(recipe),
        data: DataConfig::imdb(16, 12),
        inference: InferenceSpec::new(8, 4),
    }
}

fn smollm2_row() -> RowSpec {
    let model = "../../../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let mut recipe = LoraFineTune::new(model).with_qlora(true).with_max_length(48).with_zero_shot(false);
    recipe.trainer = recipe.trainer.with_grad_accum(2).with_eval_batch_size(4).with_progress(false);
    RowSpec {
        name: "smollm2".into(),
        recipe: RecipeConfig::Lora(recipe),
        data: DataConfig::imdb(4, 4),
        inference: InferenceSpec::new(4, 2).with_warmup_batches(0).with_generation(2),
    }
}

#[test]
fn rows_run_save_resume_and_render() {
    let dir = tempfile::tempdir().unwrap();
    let results = ResultsDir::new(dir.path().join("out"));
    let plan = Plan { preset: "test".into(), rows: vec![minilm_row(), smollm2_row()] };
    results.save_plan(&plan).unwrap();
    assert_eq!(results.load_plan().unwrap(), plan);
    let plan = plan.rows;

    let encoder = run_row(&plan[0]).unwrap();
    assert_eq!(encoder.init, WeightInit::Pretrained);
    assert_eq!(encoder.architecture, "bert");
    let accuracy = encoder.accuracy.value.unwrap();
    assert_eq!(accuracy, encoder.run.evaluation.accuracy());
    assert!(encoder.parameters.value.unwrap() > 22e6);
    assert_eq!(encoder.inference.samples, 8);
    assert!(encoder.inference_samples_per_second.value.unwrap() > 0.0);
    assert!(encoder.peak_rss_bytes.value.unwrap() > 1e8);
    let estimate = encoder.full_setup_estimate.as_ref().unwrap();
    assert_eq!((estimate.train_reviews, estimate.epochs), (25_000, 3));
    assert!((estimate.total_seconds - estimate.train_seconds - estimate.test_seconds).abs() < 1e-6);
    // The review ids point back at the reviews the row used.
    let test_split = hub::load_split(hub::IMDB_REPO, Split::Test).unwrap();
    assert_eq!(encoder.reviews.test.rows.len(), 12);
    for (row, example) in encoder.reviews.test.rows.iter().zip(plan[0].data.load().unwrap().test.examples()) {
        assert_eq!(&test_split.examples()[*row], example);
    }
    assert_eq!(encoder.reviews.train.rows.len(), 16);

    let lora = run_row(&plan[1]).unwrap();
    assert_eq!(lora.architecture, "llama");
    assert!(lora.trainable_parameters.value.unwrap() > 0.0);
    let generation = lora.generation.as_ref().unwrap();
    assert_eq!((generation.measurement.samples, generation.max_new_tokens), (2, 4));

    // Rows are saved as they finish; a later failure of a finished row does not replace it.
    results.save_row(&RowOutcome::Finished(Box::new(encoder))).unwrap();
    results.save_row(&RowOutcome::failed(&plan[0], "interrupted")).unwrap();
    assert!(results.finished_row(&plan[0]).unwrap().is_some());
    assert!(results.finished_row(&plan[1]).unwrap().is_none());
    // A saved row of another setup under the same name is refused, not silently reused.
    let mut changed = plan[0].clone();
    changed.data.train_size = 32;
    assert!(results.load_row(&changed).is_err());

    let hardware = HardwareRecord::detect("flex (cpu)", Precision::F32);
    let plan = Plan { preset: "test".into(), rows: plan };
    let partial = results.gather(&plan, hardware.clone(), None).unwrap();
    assert!(partial.rows[1].finished().is_none());
    results.save_row(&RowOutcome::Finished(Box::new(lora))).unwrap();
    let report = results.gather(&plan, hardware, None).unwrap();
    results.write_report(&report).unwrap();
    let markdown = std::fs::read_to_string(results.path().join("report.md")).unwrap();
    assert!(markdown.contains(&format!("{accuracy:.4}")), "{markdown}");
    assert!(markdown.contains("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(markdown.contains("Estimated time of the full reference setup"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["rows"][0]["status"], "finished");
    assert_eq!(json["rows"][0]["accuracy"]["unit"], "fraction");
}

#[test]
fn random_rows_never_show_an_accuracy() {
    let mut row = minilm_row();
    let RecipeConfig::Encoder(recipe) = &mut row.recipe else { unreachable!() };
    recipe.init = WeightInit::Random;
    row.data = DataConfig::imdb(8, 4);
    row.inference = InferenceSpec::new(4, 4);
    let report = run_row(&row).unwrap();
    assert_eq!(report.init, WeightInit::Random);
    assert_eq!((report.accuracy.value, report.accuracy.how.as_str()), (None, NO_WEIGHTS));
    assert!(report.macro_f1.value.is_none());
    assert!(report.weights.starts_with("random"));
    assert!(report.train_samples_per_second.value.unwrap() > 0.0);
    let dir = tempfile::tempdir().unwrap();
    let results = ResultsDir::new(dir.path());
    let plan = Plan { preset: "test".into(), rows: vec![row.clone()] };
    results.save_plan(&plan).unwrap();
    results.save_row(&RowOutcome::Finished(Box::new(report))).unwrap();
    let hardware = HardwareRecord::detect("flex (cpu)", Precision::F32);
    let mut reference = ReferenceResults { tool: "transformers".into(), ..Default::default() };
    let ours = report_speed(&results, &row);
    reference.rows.insert(
        row.name.clone(),
        ReferenceRow { inference_samples_per_second: Some(ours / 2.0), ..Default::default() },
    );
    let markdown = results.gather(&plan, hardware, Some(reference)).unwrap().to_markdown();
    let table_row = markdown.lines().find(|line| line.starts_with("| sentence-transformers")).unwrap();
    assert!(table_row.contains(NO_WEIGHTS), "{table_row}");
    assert!(table_row.contains("| random |"), "{table_row}");
    assert!(table_row.contains(", 2.00x)"), "PyTorch's number and the ratio beside ours: {table_row}");
}

/// The saved row's inference samples/s.
fn report_speed(results: &ResultsDir, row: &RowSpec) -> f64 {
    let outcome = results.finished_row(row).unwrap().unwrap();
    outcome.finished().unwrap().inference_samples_per_second.value.unwrap()
}

#[test]
fn the_presets_rows_are_valid() {
    for preset in [Preset::Default, Preset::Quick, Preset::Gpu, Preset::Reference] {
        for row in preset.rows(&PresetOptions::default()) {
            row.validate().unwrap();
        }
    }
}

#[test]
fn a_fifo_in_a_results_directory_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    polarity_testkit::make_fifo(&plan).unwrap();
    let error = polarity_testkit::within("FIFO plan.json", std::time::Duration::from_secs(10), move || {
        polarity_bench::compare::read_json::<serde_json::Value>(&plan).map(|_| ())
    });
    let message = polarity_testkit::expect_error("FIFO plan.json", error, &["plan.json", "FIFO"]);
    assert!(!message.contains('\n'), "{message}");
}
