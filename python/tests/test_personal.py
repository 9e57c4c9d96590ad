"""PersonalModel over the tiny model, with the model-free test embedder."""

import pytest

import tailor
import tailor._testing


@pytest.fixture()
def pm(tmp_path, engine):
    return tailor._testing.open_personal_model(tmp_path / "profile", engine)


def test_memories(pm):
    assert pm.memories() == []
    i = pm.remember("My dog is called Rex.")
    j = pm.remember("I live by the river.")
    mems = pm.memories()
    assert [m["id"] for m in mems] == [i, j]
    assert mems[0]["text"] == "My dog is called Rex."
    pm.forget(i)
    assert [m["id"] for m in pm.memories()] == [j]
    with pytest.raises(tailor.NotFoundError):
        pm.forget(i)
    assert pm.profile_path.endswith("profile.db")


def test_feedback_and_versions(pm):
    fb = pm.add_feedback("What is my dog called?", "I don't know.", correction="Your dog is called Rex.")
    assert isinstance(fb["id"], int) and fb["training_started"] is False
    # The correction is mirrored into a memory at once.
    assert fb["memory"]["action"] == "inserted"
    mem = {m["id"]: m for m in pm.memories()}[fb["memory"]["id"]]
    assert "Rex" in mem["text"] and mem["metadata"]["feedback_id"] == fb["id"]
    up = pm.add_feedback("Hi", "Hello!", thumbs=1)
    assert up["id"] > fb["id"]
    pm.add_feedback("Say hi", "Go away.", preferred="Hello!")
    with pytest.raises(tailor.InvalidArgumentError):
        pm.add_feedback("x", "y", correction="z", thumbs=1)
    with pytest.raises(tailor.InvalidArgumentError):
        pm.add_feedback("x", "y")
    assert pm.versions() == []
    assert pm.active_version is None
    assert pm.training_status() is None
    with pytest.raises(tailor.NotFoundError):
        pm.promote(1)
    with pytest.raises(tailor.NotFoundError):
        pm.promote("v9-nope")
    with pytest.raises(tailor.InvalidArgumentError, match="unknown option"):
        pm.train(no_such_option=1)
    assert isinstance(pm.ask("What is my dog called?", max_tokens=4), str)


def test_train_promote_rollback(pm):
    pm.add_feedback("What is my dog called?", "I don't know.", correction="Your dog is called Rex.")
    pm.add_feedback("Where do I live?", "No idea.", correction="You live by the river.")
    fast = dict(max_steps=20, learning_rate=1e-2, distill=0, paraphrases=False, max_specificity_loss=None, min_steps=0)
    first = pm.train(**fast)
    assert first["promoted"], first["summary"]
    assert first["held_out_after"] < first["held_out_before"]
    v1 = first["version"]
    assert pm.active_version == v1
    second = pm.train(**fast)
    assert second["promoted"], second["summary"]
    v2 = second["version"]
    versions = pm.versions()
    assert [v["version"] for v in versions] == [v1, v2]
    assert [v["number"] for v in versions] == [1, 2]
    assert [v["active"] for v in versions] == [False, True]
    assert versions[1]["parent"] == v1
    pm.promote(1)  # by number
    assert pm.active_version == v1
    pm.promote(v2)  # by name
    assert pm.active_version == v2
    assert pm.rollback() == v1
    assert pm.active_version == v1
    assert isinstance(pm.ask("What is my dog called?", max_tokens=4), str)
