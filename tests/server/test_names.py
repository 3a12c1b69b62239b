"""Name folding for search: accents and case disappear, words are prefixes."""

from hypothesis import given
from hypothesis import strategies as st

from server.names import MAX_PREFIX, fold, query_keys, search_keys


def test_fold_drops_accents_and_case():
    assert fold("João CONCEIÇÃO Gonçalves") == "joao conceicao goncalves"


def test_search_keys_are_prefixes_of_each_word():
    keys = search_keys("Benjamin Lynch")
    assert "ben" in keys and "lyn" in keys and "benjamin" in keys
    assert "enj" not in keys  # prefixes only: "ana" must not find "Mariana"
    assert "ana" not in search_keys("Mariana")


def test_query_keys_split_words_and_ignore_punctuation_and_operators():
    assert query_keys("ben lyn") == ["ben", "lyn"]
    assert query_keys("  João ") == ["joao"]
    assert query_keys('{"$ne": 1} .* ^a') == ["ne", "1", "a"]
    assert query_keys("***") == []


@given(st.text(min_size=1, max_size=60))
def test_every_query_made_of_a_name_prefix_matches_it(name):
    keys = set(search_keys(name))
    for word in query_keys(name):
        assert word[:MAX_PREFIX] in keys
