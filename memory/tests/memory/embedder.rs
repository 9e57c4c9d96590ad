//! The candle embedder equals sentence-transformers (golden file made by
//! scripts/golden_embeddings.py, versions recorded inside).

use tailor_memory::{dot, Embed};

use crate::common::*;

#[derive(serde::Deserialize)]
struct Golden {
    max_seq_length: usize,
    versions: serde_json::Value,
    items: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    text: String,
    embedding: Vec<f32>,
}

#[test]
fn minilm_matches_sentence_transformers_golden() {
    let golden: Golden =
        serde_json::from_str(include_str!("../data/minilm_golden.json")).expect("golden file parses");
    assert_eq!(golden.max_seq_length, 256);
    eprintln!("golden made with {}", golden.versions);
    let emb = minilm();
    assert_eq!(emb.dim(), 384);
    let texts: Vec<&str> = golden.items.iter().map(|i| i.text.as_str()).collect();
    // All at once (one padded batch) and one by one must both match.
    let batch = emb.embed(&texts).unwrap();
    for (item, v) in golden.items.iter().zip(&batch) {
        let single = &emb.embed(&[item.text.as_str()]).unwrap()[0];
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
        let cos = dot(v, &item.embedding) / item.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos_single = dot(single, &item.embedding) / item.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        eprintln!("cos {cos:.6} / {cos_single:.6}  {:.40}", item.text);
        assert!(cos >= 0.999, "batched cosine {cos} for {:?}", item.text);
        assert!(cos_single >= 0.999, "single cosine {cos_single} for {:?}", item.text);
    }
}
