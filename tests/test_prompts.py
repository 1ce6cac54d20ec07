"""Prompt sets: the shipped animals set, directories of splits, and single user files split deterministically."""

import pytest

from models.prompts import load_prompt_set, split_prompts


def test_animals_set_holds_ddpo_animals_with_held_out_ones():
    sets = load_prompt_set("animals")
    assert len(sets["train"]) == 36 and len(sets["eval_unseen"]) == 9
    assert not set(sets["train"]) & set(sets["eval_unseen"]) and set(sets["eval_seen"]) <= set(sets["train"])


def test_a_single_file_is_split_every_fifth_held_out(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\n" + "\n".join(f"prompt {i}" for i in range(10)) + "\n\n")
    sets = load_prompt_set(path)
    assert sets["eval_unseen"] == ["prompt 4", "prompt 9"] and len(sets["train"]) == 8
    assert sets["eval_seen"] == ["prompt 0", "prompt 5"]
    # the tuning split: as many train prompts as eval_seen, none of its, spread through the file
    assert sets.pop("eval_tune") == ["prompt 1", "prompt 6"]
    assert sets == split_prompts([f"prompt {i}" for i in range(10)])


def test_bad_prompt_sets_fail_with_what_is_valid(tmp_path):
    with pytest.raises(ValueError, match="animals"):
        load_prompt_set("no-such-set")
    (tmp_path / "train.txt").write_text("a\n")
    with pytest.raises(ValueError, match="eval_seen.txt, eval_unseen.txt"):
        load_prompt_set(tmp_path)
    (tmp_path / "few.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="at least 5"):
        load_prompt_set(tmp_path / "few.txt")
