//! The model: GGUF file, hyper-parameters, weights, quantized matrices.

pub mod config;
pub mod gguf;
pub mod qmatrix;
pub mod weights;
