//! The loop: SFT overfits, DPO raises the margin, a stopped run resumes bit-identically.
