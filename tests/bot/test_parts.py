"""Splitting long outbound texts into Telegram-sized parts (bot/parts.py)."""

from __future__ import annotations

import pytest

from bot.parts import MAX_PART_LENGTH, is_boundary, split_message, utf16_length

FAMILY = "👨\u200d👩\u200d👧"  # one grapheme: three emoji joined by ZWJ, 8 UTF-16 code units
FLAG_BR = "🇧🇷"  # two regional indicators
THUMBS_DARK = "👍🏿"  # emoji + skin-tone modifier
HEART = "❤\ufe0f"  # symbol + emoji variation selector
E_ACUTE = "e\u0301"  # e + combining acute accent


def words(text: str) -> list[str]:
    return text.split()


def test_a_text_within_the_limit_is_one_part_unchanged():
    text = "  olá\n\nmundo  "
    assert split_message(text) == [text]
    assert split_message("😀" * 2048) == ["😀" * 2048]  # 4,096 UTF-16 code units: fits


def test_length_is_counted_in_utf16_code_units_as_telegram_counts():
    assert utf16_length("abc") == 3
    assert utf16_length("😀") == 2
    assert utf16_length(FAMILY) == 8
    parts = split_message("😀" * 2049)
    assert [utf16_length(part) for part in parts] == [4096, 2]


def test_a_10000_character_reply_is_three_parts_split_at_paragraphs_in_order():
    paragraphs = [f"Parágrafo {n}: " + "palavra " * 60 for n in range(25)]
    text = "\n\n".join(p.strip() for p in paragraphs)
    text = text[:10_000]
    parts = split_message(text)
    assert len(parts) == 3
    assert all(utf16_length(part) <= MAX_PART_LENGTH for part in parts)
    assert all(part.startswith("Parágrafo") for part in parts[1:]), "cut at paragraph breaks"
    assert words(" ".join(parts)) == words(text)


def test_without_paragraphs_lines_are_preferred_to_words():
    line = "linha " * 99 + "fim"
    text = "\n".join([line] * 20)  # 12,060 characters, no blank line
    parts = split_message(text)
    assert all(part.endswith("fim") and part.startswith("linha") for part in parts)
    assert words("\n".join(parts)) == words(text)


def test_without_lines_words_are_kept_whole():
    text = " ".join(f"w{n:05d}" for n in range(2000))  # 13,999 characters on one line
    parts = split_message(text)
    assert all(utf16_length(part) <= MAX_PART_LENGTH for part in parts)
    assert words(" ".join(parts)) == words(text)
    assert all(part == part.strip() for part in parts)


def test_only_a_word_longer_than_the_limit_is_cut_inside():
    text = "curta " + "x" * 5000 + " fim"
    parts = split_message(text)
    assert parts == ["curta", "x" * 4096, "x" * 904 + " fim"]


@pytest.mark.parametrize("cluster", [FAMILY, FLAG_BR, THUMBS_DARK, HEART, E_ACUTE])
def test_a_hard_cut_never_splits_a_grapheme(cluster):
    for shift in range(len(cluster) + 2):  # the limit falls at every position inside a cluster
        text = "a" * shift + cluster * 3000
        parts = split_message(text, limit=1000)
        assert "".join(parts) == text
        assert all(utf16_length(part) <= 1000 for part in parts)
        cut = 0
        for part in parts[:-1]:
            cut += len(part)
            assert is_boundary(text, cut), (shift, cut)
            assert text[cut:].startswith(cluster)


def test_cr_lf_is_never_cut_apart():
    assert not is_boundary("a\r\nb", 2)
    assert is_boundary("a\r\nb", 1) and is_boundary("a\r\nb", 3)


def test_surrogate_pairs_are_never_split():
    text = "a" + "😀" * 3000
    parts = split_message(text)
    assert "".join(parts) == text
    assert all(part.encode("utf-16-le").decode("utf-16-le") == part for part in parts)
    assert [utf16_length(part) for part in parts] == [4095, 1906]


def test_flags_pair_up_regional_indicators_from_the_start_of_the_run():
    text = FLAG_BR * 3
    assert is_boundary(text, 2) and is_boundary(text, 4)
    assert not is_boundary(text, 1) and not is_boundary(text, 3)


def test_a_cluster_longer_than_the_limit_is_cut_at_the_limit():
    text = "e" + "\u0301" * 5000
    parts = split_message(text)
    assert [len(part) for part in parts] == [4096, 905]


def test_whitespace_only_parts_are_not_sent():
    text = "a" * 4000 + " " * 5000 + "b"
    assert split_message(text) == ["a" * 4000, "b"]


def test_a_long_run_of_whitespace_is_dropped_once_not_scanned_per_character():
    text = " " * 30_000 + "x" * 2_768
    parts = split_message(text)
    assert [part.strip() for part in parts] == ["x" * 2_768]
    spaced_marks = " \u0301" * 16_384  # every space carries a combining mark: no word boundary anywhere
    parts = split_message(spaced_marks)
    assert "".join(parts) == spaced_marks and all(utf16_length(part) <= MAX_PART_LENGTH for part in parts)
    cut = 0
    for part in parts[:-1]:
        cut += len(part)
        assert is_boundary(spaced_marks, cut)
