from os import PathLike
from typing import Union

from tailor import Engine, PersonalModel

_Path = Union[str, "PathLike[str]"]

def write_tiny_model(path: _Path, *, seed: int = 0) -> str: ...
def open_personal_model(profile_dir: _Path, engine: Engine, *, auto_train: int = 0) -> PersonalModel: ...
def panic() -> None: ...
