//! The comparison chart: SVG and PNG written, text rendered with the bundled font, bad input refused.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use polarity_bench::{BenchError, CHART_SIZE, ChartPoint, render_svg, write_chart};

/// Two scored rows and three timed with random weights, 0.05 to 500 samples/s.
fn points() -> Vec<ChartPoint> {
    vec![
        ChartPoint::new("MiniLM-L6 fine-tuned (cpu, f32)", 500.0, Some(0.853)),
        ChartPoint::new("SmolLM2-135M LoRA (cpu, f32)", 3.2, Some(0.746)),
        ChartPoint::new("BERT-base random (cpu, f32)", 41.0, None),
        ChartPoint::new("Qwen2.5-0.5B random (cpu, f32)", 0.05, None),
        ChartPoint::new("Llama-3.2-1B random (cpu, bf16)", 0.09, None),
    ]
}

/// The decoded PNG: width, height, RGB pixels.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((frame.color_type, frame.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
    pixels.truncate(frame.buffer_size());
    (frame.width, frame.height, pixels)
}

/// The distinct colours and the non-white pixels in a rectangle of the image.
fn colours(pixels: &[u8], width: u32, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>) -> (usize, usize) {
    let mut distinct = HashSet::new();
    let mut inked = 0;
    for y in ys {
        for x in xs.clone() {
            let at = ((y * width + x) * 3) as usize;
            let rgb = [pixels[at], pixels[at + 1], pixels[at + 2]];
            distinct.insert(rgb);
            inked += usize::from(rgb != [255, 255, 255]);
        }
    }
    (distinct.len(), inked)
}

#[test]
fn writes_svg_and_png_with_every_label() {
    // Kept under the target folder, to look at.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("polarity-bench-chart").join("nested");
    let _ = std::fs::remove_dir_all(&dir);
    let (svg, png) = (dir.join("chart.svg"), dir.join("chart.png"));
    write_chart("IMDB sentiment: accuracy against speed", &points(), &svg, &png).unwrap();

    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
    for point in points() {
        assert!(text.contains(&point.label), "{} missing from the SVG", point.label);
    }
    assert!(text.contains("accuracy not measured (no weights)"));
    assert!(text.contains("inference samples/s"));

    let (width, height, pixels) = decode(&png);
    assert_eq!((width, height), CHART_SIZE);
    // The title: anti-aliased glyphs give many shades; without a font there would be none.
    let (distinct, inked) = colours(&pixels, width, 200..700, 0..40);
    assert!(distinct > 8 && inked > 300, "title region: {distinct} colours, {inked} inked pixels");
    // The y axis' tick labels.
    let (distinct, inked) = colours(&pixels, width, 0..75, 60..400);
    assert!(distinct > 8 && inked > 200, "y labels: {distinct} colours, {inked} inked pixels");
}

#[test]
fn measured_only_and_unmeasured_only_charts_draw() {
    let measured: Vec<_> = points().into_iter().filter(|p| p.accuracy.is_some()).collect();
    let svg = render_svg("measured", &measured).unwrap();
    assert!(!svg.contains("accuracy not measured"));
    let unmeasured: Vec<_> = points().into_iter().filter(|p| p.accuracy.is_none()).collect();
    let svg = render_svg("unmeasured", &unmeasured).unwrap();
    assert!(svg.contains("accuracy not measured"));
    // One point: the axis still spans more than a decade and has labels.
    let one = [ChartPoint::new("only", 12.0, Some(0.9))];
    assert!(render_svg("one", &one).unwrap().contains("only"));
}

#[test]
fn empty_and_nan_are_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, png) = (dir.path().join("chart.svg"), dir.path().join("chart.png"));

    let error = write_chart("empty", &[], &svg, &png).unwrap_err();
    assert!(matches!(error, BenchError::EmptyInput { what: "chart points" }), "{error}");

    let mut bad = points();
    bad[2].samples_per_second = f64::NAN;
    let error = write_chart("nan", &bad, &svg, &png).unwrap_err();
    match &error {
        BenchError::InvalidChartPoint { label, field, value, .. } => {
            assert_eq!((label.as_str(), *field), ("BERT-base random (cpu, f32)", "samples_per_second"));
            assert!(value.is_nan());
        }
        other => panic!("expected InvalidChartPoint, got {other}"),
    }
    assert!(error.to_string().contains("BERT-base random"), "{error}");

    bad[2].samples_per_second = 0.0;
    assert!(matches!(write_chart("zero", &bad, &svg, &png), Err(BenchError::InvalidChartPoint { .. })));
    assert!(!svg.exists() && !png.exists());
}

#[test]
fn write_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a folder").unwrap();
    let svg = blocker.join("chart.svg");
    let error = write_chart("t", &points(), &svg, &dir.path().join("chart.png")).unwrap_err();
    match error {
        BenchError::Write { path, .. } => assert_eq!(path, svg),
        other => panic!("expected Write, got {other}"),
    }
}

#[test]
fn crowded_points_keep_every_label() {
    // Near-identical rows, as CPU thread counts or batch sizes of one model give; kept to look at.
    let mut points = Vec::new();
    for (i, speed) in [10.0, 10.8, 11.5, 12.0, 12.4, 13.1].into_iter().enumerate() {
        points.push(ChartPoint::new(format!("MiniLM-L6 batch {}", 8 << i), speed, Some(0.85 + 0.001 * i as f64)));
    }
    for (i, speed) in [9.0, 9.6, 10.2, 11.0].into_iter().enumerate() {
        points.push(ChartPoint::new(format!("random model {i}"), speed, None));
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("polarity-bench-chart");
    write_chart("crowded", &points, &dir.join("crowded.svg"), &dir.join("crowded.png")).unwrap();
    let svg = std::fs::read_to_string(dir.join("crowded.svg")).unwrap();
    assert!(points.iter().all(|p| svg.contains(&p.label)));
}
