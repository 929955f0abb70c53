"""Person names read as people write them, never in the raw ^ form."""

from __future__ import annotations

import pytest

from workers.names import EN_REPRESENTATION, display, format_group, human_names


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("Doe^John", "John Doe"),
        ("Doe^John^Adam^Dr.^Jr.", "Dr. John Adam Doe Jr."),
        ("Doe", "Doe"),
        ("^John", "John"),
        ("Smith^Anna^^^MD", "Anna Smith MD"),
        ("  Doe ^  John  ", "John Doe"),
        ("van der Berg^Jan", "Jan van der Berg"),
        ("山田^太郎", "山田 太郎"),
        ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ﾔﾏﾀﾞ ﾀﾛｳ"),
        ("홍^길동", "홍 길동"),
        ("Люкceмбypг", "Люкceмбypг"),
        ("^^^^", None),
        ("----", None),
        ("", None),
    ],
)
def test_format_group(group: str, expected: str | None) -> None:
    assert format_group(group) == expected


def test_display_prefers_the_alphabetic_group() -> None:
    name = {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}
    assert display(name) == "Tarou Yamada"
    assert display({"Ideographic": "山田^太郎"}) == "山田 太郎"
    assert display({"Alphabetic": "^^"}) is None
    assert display(None) is None


def test_human_names_one_per_group() -> None:
    names = human_names(
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    )
    assert names[0] == {
        "use": "official",
        "text": "Tarou Yamada",
        "family": "Yamada",
        "given": ["Tarou"],
    }
    assert names[1]["extension"] == [{"url": EN_REPRESENTATION, "valueCode": "IDE"}]
    assert names[2]["extension"] == [{"url": EN_REPRESENTATION, "valueCode": "SYL"}]
    assert human_names({"Alphabetic": "Doe^John^Adam^Dr.^Jr."}) == [
        {
            "use": "official",
            "text": "Dr. John Adam Doe Jr.",
            "family": "Doe",
            "given": ["John", "Adam"],
            "prefix": ["Dr."],
            "suffix": ["Jr."],
        }
    ]
