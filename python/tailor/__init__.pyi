from os import PathLike
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from tailor import federated as federated

_Path = Union[str, "PathLike[str]"]
_Matrix = npt.ArrayLike

__version__: str

class TailorError(Exception):
    """Base class of every error Tailor raises (a Rust panic included)."""

class InvalidArgumentError(TailorError): ...
class NotFoundError(TailorError): ...
class FileSystemError(TailorError): ...
class CorruptDataError(TailorError): ...
class UnsupportedError(TailorError): ...
class IncompatibleError(TailorError): ...
class ContextOverflowError(TailorError): ...
class CancelledError(TailorError): ...
class BusyError(TailorError): ...
class TrainingError(TailorError): ...
class InternalError(TailorError): ...

def default_model_path() -> str:
    """The cached SmolLM2 GGUF under $TAILOR_HOME (default: the platform cache dir, ~/.cache/tailor)."""

def default_embedder_dir() -> str:
    """The cached all-MiniLM-L6-v2 folder profiles embed memories with."""

class Engine:
    """A loaded llama-family GGUF model, shared by sessions, threads and training runs."""

    def __init__(
        self,
        model_path: Optional[_Path] = None,
        *,
        threads: Optional[int] = None,
        context_length: Optional[int] = None,
        cache_type: Optional[str] = None,
    ) -> None:
        """`cache_type`: KV cache storage of the sessions, "f16" (default), "q8_0", "q4_0" or "k,v"."""
    @property
    def fingerprint(self) -> str:
        """The base fingerprint adapters record."""
    @property
    def model_path(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def model_config(self) -> Dict[str, Any]: ...
    def tokenize(self, text: str) -> List[int]: ...
    def detokenize(self, ids: Sequence[int], *, skip_control: bool = False) -> str: ...
    def chat_prompt(self, prompt: str, *, system: Optional[str] = None) -> str: ...
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        seed: int = 0,
        system: Optional[str] = None,
        adapter: Optional[Adapter] = None,
        raw: bool = False,
        json_schema: Optional[Union[Dict[str, Any], str]] = None,
        regex: Optional[str] = None,
        grammar: Optional[str] = None,
    ) -> str:
        """Answers `prompt` (a user message in the chat template; `raw`: the text as is). `json_schema`,
        `regex` or `grammar` (Lark) constrain the answer so that it always parses. Releases the GIL."""
    def session(
        self,
        *,
        system: Optional[str] = None,
        adapter: Optional[Adapter] = None,
        context_length: Optional[int] = None,
        cache_type: Optional[str] = None,
    ) -> Session:
        """A conversation; past `context_length` it keeps going, its oldest turns dropped."""

class Session:
    """A conversation with its own KV cache; one call at a time (BusyError otherwise)."""

    def send(
        self,
        text: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        seed: int = 0,
        json_schema: Optional[Union[Dict[str, Any], str]] = None,
        regex: Optional[str] = None,
        grammar: Optional[str] = None,
    ) -> str: ...
    def reset(self) -> None: ...
    @property
    def history(self) -> List[Tuple[str, str]]: ...
    @property
    def cached_tokens(self) -> int: ...

class Adapter:
    """A LoRA adapter: y = W·x + scale·B(A·x) per targeted projection, scale = alpha / rank."""

    @staticmethod
    def load(path: _Path) -> Adapter:
        """Loads a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)."""
    def save(self, path: _Path) -> None:
        """Saves a PEFT adapter directory, atomically."""
    @property
    def rank(self) -> int: ...
    @property
    def alpha(self) -> float: ...
    @property
    def scale(self) -> float: ...
    @property
    def targets(self) -> List[str]: ...
    @property
    def base_fingerprint(self) -> Optional[str]: ...
    @property
    def num_parameters(self) -> int: ...
    @property
    def layers(self) -> List[int]: ...
    @property
    def config(self) -> Dict[str, Any]: ...
    def factors(self) -> Dict[str, Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
        """PEFT module name -> (A [r, in], B [out, r]), float32 copies."""
    @staticmethod
    def from_factors(
        factors: Mapping[str, Tuple[_Matrix, _Matrix]],
        *,
        rank: int,
        alpha: float,
        base_fingerprint: Optional[str] = None,
        check_finite: bool = True,
    ) -> Adapter: ...
    def __len__(self) -> int: ...

def train_lora(
    engine: Engine,
    examples: Sequence[Tuple[str, str]],
    *,
    steps: int = 20,
    learning_rate: float = 1e-3,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Optional[Sequence[str]] = None,
    init: Optional[Adapter] = None,
    freeze_a: bool = False,
    frozen_rank: int = 0,
    seed: int = 0,
    batch_size: int = 1,
    chat_template: bool = True,
    warmup_steps: int = 0,
    max_seq_len: int = 512,
    threads: int = 0,
) -> Tuple[Adapter, Dict[str, Any]]:
    """SFT of a LoRA adapter on (prompt, answer) pairs; metrics: steps, total_steps, final_loss,
    losses, tokens_per_s, trained_tokens, seconds, stop. ``freeze_a`` trains only the B factors
    (FFA-LoRA); ``frozen_rank`` keeps the first components of ``init`` (rows of A, columns of B)
    frozen and trains the rest (FLoRA stacking: a fresh update on top of a frozen adapter).
    Releases the GIL."""

def mean_nll(
    engine: Engine, examples: Sequence[Tuple[str, str]], *, adapter: Optional[Adapter] = None, chat_template: bool = True
) -> float:
    """Mean answer-token NLL (token-weighted) under the base plus `adapter`."""

class PersonalModel:
    """One user's profile (memories, feedback, adapter versions) over an engine."""

    @staticmethod
    def open(
        profile_dir: _Path, engine: Engine, *, embedder_dir: Optional[_Path] = None, auto_train: int = 3
    ) -> PersonalModel: ...
    @property
    def profile_path(self) -> str: ...
    @property
    def active_version(self) -> Optional[str]: ...
    def remember(self, text: str) -> int: ...
    def memories(self) -> List[Dict[str, Any]]: ...
    def forget(self, memory_id: int) -> None: ...
    def add_feedback(
        self,
        prompt: str,
        answer: str,
        *,
        correction: Optional[str] = None,
        thumbs: Optional[int] = None,
        preferred: Optional[str] = None,
    ) -> Dict[str, Any]: ...
    def ask(
        self,
        prompt: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        seed: int = 0,
        json_schema: Optional[Union[Dict[str, Any], str]] = None,
        regex: Optional[str] = None,
        grammar: Optional[str] = None,
    ) -> str: ...
    def train(self, **options: Any) -> Dict[str, Any]: ...
    def training_status(self) -> Optional[Dict[str, Any]]: ...
    def wait_training(self) -> Optional[Dict[str, Any]]: ...
    def versions(self) -> List[Dict[str, Any]]: ...
    def promote(self, version: Union[int, str]) -> None: ...
    def rollback(self) -> Optional[str]: ...
