from shard_tools.keys import MAX_KEY_CHARS, sanitise_key, unique_keys
from shard_tools.sample import split_member_name


def test_sanitise_replaces_everything_outside_the_safe_set():
    assert sanitise_key("abc_DEF-012") == "abc_DEF-012"
    assert sanitise_key("clip.with.dots") == "clip_with_dots"
    assert sanitise_key("a b/c\\d:é") == "a_b_c_d__"
    assert sanitise_key("") == "_"


def test_sanitised_key_survives_webdatasets_first_dot_rule():
    key = sanitise_key("v1.2.final.cut")
    assert split_member_name(f"{key}.mp4") == (key, "mp4")


def test_unique_keys_suffix_collisions_in_input_order():
    assert unique_keys(["a.b", "a_b", "a b", "a_b-1"]) == ["a_b", "a_b-1", "a_b-2", "a_b-1-1"]


def test_long_stems_are_cut_and_stay_unique():
    keys = unique_keys(["x" * 300, "x" * 301])
    assert len(keys[0]) == MAX_KEY_CHARS and keys[1] == keys[0] + "-1"
