//! Text embedders: the [`Embed`] trait and [`BertEmbedder`], a sentence-transformers BERT
//! folder (all-MiniLM-L6-v2 by default) run on candle.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// Turns texts into L2-normalised vectors. Implementations are shared between threads and
/// profiles (`Send + Sync`), so one loaded model serves every store of a process.
pub trait Embed: Send + Sync {
    /// A stable name for the model; stored with every embedding so a model change is noticed.
    fn model_id(&self) -> &str;
    /// The vector length.
    fn dim(&self) -> usize;
    /// One unit-length vector of [`Embed::dim`] values per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

/// How token vectors become one sentence vector (sentence-transformers' `1_Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the attention mask (all-MiniLM-L6-v2).
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
}

/// A sentence-transformers BERT folder on candle (CPU): `config.json`, `model.safetensors`,
/// `tokenizer.json`, optionally `1_Pooling/config.json` and `sentence_bert_config.json`.
///
/// Batches are padded to their longest text and truncated at the folder's `max_seq_length`
/// (256 word pieces for all-MiniLM-L6-v2), pooled as the folder says, and L2-normalised, which
/// reproduces `SentenceTransformer.encode(..., normalize_embeddings=True)`.
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    dim: usize,
    model_id: String,
    batch_size: usize,
    device: Device,
}

#[derive(serde::Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(serde::Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

impl BertEmbedder {
    /// Loads the folder. The model id recorded with embeddings is the folder's name.
    pub fn load(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref();
        let err = |reason: String| Error::Embedder { path: folder.to_path_buf(), reason };
        let file = |name: &str| -> Result<PathBuf> {
            let p = folder.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::NotFound { path: p })
            }
        };
        let config_text = std::fs::read_to_string(file("config.json")?)
            .map_err(|e| Error::io(folder.join("config.json"), e))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| err(format!("config.json is not a BERT config: {e}")))?;

        let pooling = match std::fs::read_to_string(folder.join("1_Pooling/config.json")) {
            Ok(text) => {
                let p: PoolingConfig = serde_json::from_str(&text)
                    .map_err(|e| err(format!("1_Pooling/config.json: {e}")))?;
                match (p.pooling_mode_mean_tokens, p.pooling_mode_cls_token) {
                    (true, false) if !p.pooling_mode_max_tokens && !p.pooling_mode_mean_sqrt_len_tokens => Pooling::Mean,
                    (false, true) if !p.pooling_mode_max_tokens && !p.pooling_mode_mean_sqrt_len_tokens => Pooling::Cls,
                    _ => return Err(err("unsupported pooling: only mean or CLS pooling alone".into())),
                }
            }
            // sentence-transformers' default for a bare transformer folder is mean pooling.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pooling::Mean,
            Err(e) => return Err(Error::io(folder.join("1_Pooling/config.json"), e)),
        };
        let max_len = match std::fs::read_to_string(folder.join("sentence_bert_config.json")) {
            Ok(text) => serde_json::from_str::<SentenceBertConfig>(&text)
                .map_err(|e| err(format!("sentence_bert_config.json: {e}")))?
                .max_seq_length,
            Err(_) => None,
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);

        let mut tokenizer = Tokenizer::from_file(file("tokenizer.json")?)
            .map_err(|e| err(format!("tokenizer.json: {e}")))?;
        // The file pads every input to 128 and truncates at 128; we pad to the batch's longest
        // and truncate at max_seq_length like sentence-transformers.
        let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(config.pad_token_id as u32);
        let pad_token = tokenizer.get_padding().map(|p| p.pad_token.clone()).unwrap_or_else(|| "[PAD]".into());
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| err(format!("truncation: {e}")))?;

        let device = Device::Cpu;
        let weights = file("model.safetensors")?;
        // SAFETY: the file is memory-mapped read-only; it must not be modified while loaded
        // (it lives in Tailor's model cache, written once and checked by SHA-256).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
        let model = BertModel::load(vb, &config).map_err(|e| err(format!("weights: {e}")))?;
        let model_id = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bert".into());
        Ok(BertEmbedder {
            model,
            tokenizer,
            pooling,
            dim: config.hidden_size,
            model_id,
            batch_size: 32,
            device,
        })
    }

    /// Texts per forward pass (default 32).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// The pooling read from the folder.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::Tokenizer { reason: e.to_string() })?;
        let n = encodings.len();
        let len = encodings.iter().map(|e| e.get_ids().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let types = Tensor::from_vec(types, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, dim)
        let pooled = match self.pooling {
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (n, len, 1)
                let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (n, dim)
                let counts = m.sum(1)?.clamp(1e-9f32, f32::MAX)?; // (n, 1)
                summed.broadcast_div(&counts)?
            }
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let mut rows: Vec<Vec<f32>> = pooled.to_vec2()?;
        for r in &mut rows {
            normalize(r);
        }
        Ok(rows)
    }
}

impl Embed for BertEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        // Sorting by length keeps padding small inside each batch; results go back in order.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            for (&i, v) in chunk.iter().zip(self.embed_batch(&batch)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_folder_is_not_found() {
        let err = BertEmbedder::load("/nonexistent/tailor/model").err().unwrap();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
    }

    #[test]
    fn max_pooling_is_refused() {
        let dir = std::env::temp_dir().join(format!("tailor-emb-pool-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"vocab_size":10,"hidden_size":4,"num_hidden_layers":1,"num_attention_heads":1,
               "intermediate_size":8,"hidden_act":"gelu","hidden_dropout_prob":0.0,
               "max_position_embeddings":16,"type_vocab_size":2,"initializer_range":0.02,
               "layer_norm_eps":1e-12,"pad_token_id":0,"classifier_dropout":null,"model_type":"bert"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("1_Pooling/config.json"), r#"{"pooling_mode_max_tokens":true}"#).unwrap();
        let err = BertEmbedder::load(&dir).err().unwrap();
        assert!(matches!(&err, Error::Embedder { reason, .. } if reason.contains("pooling")), "{err}");
    }
}
