//! Behaviour of the trainer on tiny models written on the fly.

mod common;
mod forward;
mod gradients;
mod personal;
mod personal_model;
mod real_model;
mod training;
