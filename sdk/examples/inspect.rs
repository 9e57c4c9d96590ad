//! Prints a GGUF model's hyper-parameters and tensor types.
fn main() -> tailor::Result<()> {
    let path = std::env::args().nth(1).expect("usage: inspect MODEL.gguf");
    let g = tailor::model::gguf::GgufFile::open(&path)?;
    let cfg = tailor::ModelConfig::from_gguf(&g)?;
    println!("{cfg:#?}");
    let mut counts = std::collections::BTreeMap::new();
    for (name, t) in g.tensors() {
        *counts.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
        if name.starts_with("blk.0.") || !name.starts_with("blk.") {
            println!("{name}: {:?} {:?}", t.dtype, t.shape);
        }
    }
    println!("{counts:?}");
    let mut keys: Vec<_> = g.metadata().keys().filter(|k| !k.starts_with("tokenizer.ggml.")).collect();
    keys.sort();
    for k in keys {
        println!("{k} = {:?}", g.metadata()[k]);
    }
    Ok(())
}
