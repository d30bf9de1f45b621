//! Classify texts with a local checkpoint or a hub id:
//! `cargo run --example classify -- MODEL TEXT...`

use llmx::tasks::{classify::Classifier, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: classify MODEL TEXT...")?;
    let texts: Vec<String> = args.collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();

    let classifier = Classifier::load(&model, &LoadOptions::default())?;
    for (text, result) in texts.iter().zip(classifier.classify(&texts)?) {
        let classification = result?;
        let best = &classification.labels[0];
        println!("{text:?}: {} ({:.4})", best.label, best.score);
    }
    Ok(())
}
