"""The C ABI's flow from Python through ctypes (standard library only).

    python3 flow.py LIBTAILOR_FFI.so MODEL.gguf WORKDIR EMBEDDER_DIR

Open an engine, stream a generation and stop it from the callback, cancel one from another
thread, add and search memories, add feedback, run a short training job with progress (and
cancel another), and use the promoted version. Prints "python flow: ok".
"""

import ctypes as C
import json
import sys
import threading

lib_path, model, workdir, embedder = sys.argv[1:5]
lib = C.CDLL(lib_path)

TOKEN_CB = C.CFUNCTYPE(C.c_int32, C.c_char_p, C.c_size_t, C.c_void_p)


class Progress(C.Structure):
    _fields_ = [
        ("step", C.c_size_t),
        ("total_steps", C.c_size_t),
        ("loss", C.c_double),
        ("tokens_per_s", C.c_double),
        ("elapsed_seconds", C.c_double),
        ("eta_seconds", C.c_double),
    ]


PROGRESS_CB = C.CFUNCTYPE(C.c_int32, C.POINTER(Progress), C.c_void_p)
P = C.c_void_p
S = C.c_char_p
OUT = C.POINTER(C.c_char_p)

SIGNATURES = {
    "tailor_abi_version": (C.c_uint32, []),
    "tailor_last_error_message": (C.c_size_t, [C.c_char_p, C.c_size_t]),
    "tailor_status_name": (C.c_char_p, [C.c_int32]),
    "tailor_string_free": (None, [C.c_char_p]),
    "tailor_engine_open": (C.c_int32, [S, S, C.POINTER(P)]),
    "tailor_engine_free": (None, [P]),
    "tailor_session_new": (C.c_int32, [P, S, C.POINTER(P)]),
    "tailor_session_free": (None, [P]),
    "tailor_session_chat": (C.c_int32, [P, S, S, TOKEN_CB, P, OUT]),
    "tailor_session_generate": (C.c_int32, [P, S, S, TOKEN_CB, P, OUT]),
    "tailor_session_cancel_token": (C.c_int32, [P, C.POINTER(P)]),
    "tailor_cancel_token_cancel": (C.c_int32, [P]),
    "tailor_cancel_token_free": (None, [P]),
    "tailor_profile_open": (C.c_int32, [P, S, S, S, C.POINTER(P)]),
    "tailor_profile_free": (None, [P]),
    "tailor_profile_session_new": (C.c_int32, [P, S, C.POINTER(P)]),
    "tailor_profile_active_version": (C.c_int32, [P, OUT]),
    "tailor_memory_add": (C.c_int32, [P, S, S, C.POINTER(C.c_int64)]),
    "tailor_memory_search": (C.c_int32, [P, S, C.c_size_t, S, OUT]),
    "tailor_feedback_add": (C.c_int32, [P, S, C.POINTER(C.c_int64)]),
    "tailor_training_start": (C.c_int32, [P, S, PROGRESS_CB, P, P, C.POINTER(P)]),
    "tailor_training_wait": (C.c_int32, [P, C.POINTER(C.c_int32), OUT]),
    "tailor_training_free": (None, [P]),
    "tailor_adapter_list": (C.c_int32, [P, OUT]),
}
for name, (res, args) in SIGNATURES.items():
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = res, args

OK, CANCELLED, INVALID = 0, -8, -1
JOB_PROMOTED, JOB_CANCELLED = 1, 3


def last_error():
    need = lib.tailor_last_error_message(None, 0)
    buf = C.create_string_buffer(need)
    lib.tailor_last_error_message(buf, need)
    return buf.value.decode()


def check(status, what, want=OK):
    if status != want:
        raise AssertionError(
            f"{what}: {lib.tailor_status_name(status).decode()} (expected "
            f"{lib.tailor_status_name(want).decode()}): {last_error()}"
        )


def take_json(out):
    """Reads and frees a JSON string the library returned."""
    value = json.loads(out.value.decode())
    lib.tailor_string_free(out)
    return value


assert lib.tailor_abi_version() == 1

engine = P()
check(lib.tailor_engine_open(b"/nonexistent.gguf", None, C.byref(engine)), "open missing", -2)
assert "/nonexistent.gguf" in last_error()
check(lib.tailor_engine_open(model.encode(), b'{"threads": 2}', C.byref(engine)), "engine_open")
check(lib.tailor_engine_open(b"\xff\xfe", None, C.byref(P())), "invalid UTF-8", INVALID)

# 1. Stream and stop from the callback.
session = P()
check(lib.tailor_session_new(engine, None, C.byref(session)), "session_new")
chunks = []


@TOKEN_CB
def on_chunk(chunk, length, _user):
    chunks.append(C.string_at(chunk, length).decode())
    return 1 if len(chunks) >= 3 else 0


out = C.c_char_p()
check(lib.tailor_session_chat(session, "What is the capital of France?".encode(), b'{"max_tokens": 24}', on_chunk, None, C.byref(out)), "chat")
result = take_json(out)
print("streamed:", repr("".join(chunks)), result["finish_reason"])
assert len(chunks) == 3 and result["finish_reason"] == "callback"
assert "".join(chunks) == result["text"]

# 2. Cancel from another thread.
token = P()
check(lib.tailor_session_cancel_token(session, C.byref(token)), "cancel_token")
first = threading.Event()
cancelled = threading.Event()


@TOKEN_CB
def wait_for_cancel(_chunk, _length, _user):
    first.set()
    cancelled.wait(30)
    return 0


def canceller():
    first.wait(30)
    check(lib.tailor_cancel_token_cancel(token), "cancel")
    cancelled.set()


t = threading.Thread(target=canceller)
t.start()
out = C.c_char_p()
check(lib.tailor_session_generate(session, b"Once upon a time", b'{"max_tokens": 200, "ignore_eos": true}', wait_for_cancel, None, C.byref(out)), "generate", CANCELLED)
t.join()
result = take_json(out)
assert result["finish_reason"] == "cancelled" and len(result["token_ids"]) < 200
lib.tailor_session_free(session)
check(lib.tailor_cancel_token_cancel(token), "cancel after free")  # harmless
lib.tailor_cancel_token_free(token)

# 3. Memories.
profile = P()
check(lib.tailor_profile_open(engine, f"{workdir}/py.db".encode(), embedder.encode(), None, C.byref(profile)), "profile_open")
mid = C.c_int64()
for text in ["I have a golden retriever called Biscuit.", "My sister's cat is named Pepper.", "I live in Lisbon."]:
    check(lib.tailor_memory_add(profile, text.encode(), None, C.byref(mid)), "memory_add")
out = C.c_char_p()
check(lib.tailor_memory_search(profile, b"What is my dog's name?", 1, b'{"mode": "vector"}', C.byref(out)), "search")
hits = take_json(out)
print("search:", hits[0]["memory"]["text"])
assert "Biscuit" in hits[0]["memory"]["text"]

# 4. Feedback and a short training run with progress; the promoted version runs.
for prompt, answer, corrected in [
    ("What is my dog called?", "I don't know.", "Your dog is called Biscuit."),
    ("Where do I live?", "I cannot know that.", "You live in Lisbon."),
]:
    fb = json.dumps({"prompt": prompt, "answer": answer, "kind": "correction", "corrected": corrected})
    check(lib.tailor_feedback_add(profile, fb.encode(), C.byref(mid)), "feedback_add")
steps = []


@PROGRESS_CB
def on_progress(p, _user):  # on the training thread
    steps.append((p.contents.step, p.contents.total_steps, p.contents.loss))
    return 0


opts = {"max_steps": 2, "learning_rate": 0.002, "warmup_steps": 0, "max_seq_len": 64,
        "held_out_every": 1000, "max_general_increase": 10.0, "replay": 0, "checkpoint_every": 0,
        "distill": 0, "max_specificity_loss": None}
job, state, out = P(), C.c_int32(), C.c_char_p()
check(lib.tailor_training_start(profile, json.dumps(opts).encode(), on_progress, None, None, C.byref(job)), "training_start")
check(lib.tailor_training_wait(job, C.byref(state), C.byref(out)), "training_wait")
status = take_json(out)
lib.tailor_training_free(job)
print("training:", status["state"], status["version"], steps)
assert state.value == JOB_PROMOTED and [s for s, _, _ in steps] == [1, 2]
check(lib.tailor_profile_active_version(profile, C.byref(out)), "active_version")
assert out.value.decode() == status["version"]
lib.tailor_string_free(out)
check(lib.tailor_adapter_list(engine, C.byref(out)), "adapter_list")
assert any(a["name"] == "personal" and a["active_weight"] == 1.0 for a in take_json(out)["adapters"])

# A run stopped by the callback ends cancelled.
@PROGRESS_CB
def stop_now(_p, _user):
    return 1


check(lib.tailor_training_start(profile, b'{"max_steps": 50, "max_seq_len": 64, "replay": 0, "distill": 0}', stop_now, None, None, C.byref(job)), "training_start 2")
check(lib.tailor_training_wait(job, C.byref(state), None), "training_wait 2", CANCELLED)
assert state.value == JOB_CANCELLED
lib.tailor_training_free(job)

me = P()
check(lib.tailor_profile_session_new(profile, None, C.byref(me)), "profile_session_new")
check(lib.tailor_session_chat(me, b"What is my dog called?", b'{"max_tokens": 16}', TOKEN_CB(), None, C.byref(out)), "chat with memory")
result = take_json(out)
print("answer:", result["text"], "memories:", [m["text"] for m in result["memories"]])
assert result["memories"]
lib.tailor_session_free(me)
lib.tailor_profile_free(profile)
lib.tailor_engine_free(engine)
print("python flow: ok")
