"""Tailor: a small language model made personal on the device that runs it.

A binding of the Tailor Rust SDK (the ``tailor._native`` extension module): every class and
function here is implemented in Rust; this file only re-exports them.

    import tailor
    engine = tailor.Engine()                  # the cached SmolLM2-135M-Instruct GGUF
    print(engine.generate("What is the capital of France?", max_tokens=16))
    adapter, metrics = tailor.train_lora(engine, [("What is my dog called?", "Rex.")], steps=20)
    adapter.save("my-adapter")                # a PEFT adapter directory
    print(engine.generate("What is my dog called?", adapter=adapter))
"""

from tailor._native import (
    Adapter,
    BusyError,
    CancelledError,
    ContextOverflowError,
    CorruptDataError,
    Engine,
    FileSystemError,
    IncompatibleError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PersonalModel,
    Session,
    TailorError,
    TrainingError,
    UnsupportedError,
    __version__,
    default_embedder_dir,
    default_model_path,
    mean_nll,
    train_lora,
)
from tailor import federated

__all__ = [
    "Adapter",
    "BusyError",
    "CancelledError",
    "ContextOverflowError",
    "CorruptDataError",
    "Engine",
    "FileSystemError",
    "IncompatibleError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PersonalModel",
    "Session",
    "TailorError",
    "TrainingError",
    "UnsupportedError",
    "__version__",
    "default_embedder_dir",
    "default_model_path",
    "federated",
    "mean_nll",
    "train_lora",
]
