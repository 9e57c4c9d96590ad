"""Helpers for Tailor's own tests (not a stable API): a tiny GGUF model written on the fly and
profiles with a model-free embedder, so tests run in seconds."""

from tailor._native import _testing as _native_testing

write_tiny_model = _native_testing.write_tiny_model
open_personal_model = _native_testing.open_personal_model
panic = _native_testing.panic

__all__ = ["write_tiny_model", "open_personal_model", "panic"]
