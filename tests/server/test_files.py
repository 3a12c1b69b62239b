"""What a downloaded file is called and typed: safe whatever name and type the contact gave."""

from urllib.parse import unquote

import pytest

from server.handlers.files import content_disposition, safe_file_name, served_type
from server.models.messages import preview_text


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("fatura.pdf", "fatura.pdf"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..\\..\\boot.ini", "_.._boot.ini"),
        ("a\x00b\r\nc\td.txt", "abcd.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),  # a right-to-left override would show "exe.pdf"
        ("zero\u200bwidth", "zerowidth"),
        ("...", "file"),
        ("\x01\x02", "file"),
        (".hidden", "hidden"),
        ("x" * 400, "x" * 150),
        ("Cafe\u0301.txt", "Café.txt"),  # NFC
    ],
)
def test_safe_file_name(name, safe):
    assert safe_file_name(name) == safe


def test_content_disposition_has_an_ascii_filename_and_the_utf8_one():
    header = content_disposition('relatório "final"; 100%.pdf')
    assert header.startswith("attachment; ")
    ascii_part, utf8_part = header.split("; filename*=UTF-8''")
    assert ascii_part == 'attachment; filename="relat_rio _final_; 100_.pdf"'
    assert unquote(utf8_part) == 'relatório "final"; 100%.pdf'
    assert all(" " <= char <= "~" for char in header)


@pytest.mark.parametrize(
    ("stored", "served"),
    [
        ("application/pdf", "application/pdf"),
        ("TEXT/HTML", "text/html"),
        ("text/html\r\nX-Evil: 1", "application/octet-stream"),
        ("", "application/octet-stream"),
        ("nonsense", "application/octet-stream"),
    ],
)
def test_served_type_is_the_stored_one_when_it_is_a_type(stored, served):
    assert served_type(stored) == served


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ({"text": "Olá"}, "Olá"),
        ({"kind": "photo", "text": "recibo", "file": {"name": "photo-1.jpg"}}, "[photo] recibo"),
        ({"kind": "document", "text": "", "file": {"name": "fatura.pdf"}}, "[document] fatura.pdf"),
        (
            {"kind": "location", "text": "", "location": {"latitude": -23.5, "longitude": -46.6}},
            "[location] -23.5, -46.6",
        ),
        ({"kind": "contact", "text": "", "contact": {"first_name": "Ana", "last_name": ""}}, "[contact] Ana"),
        ({"kind": "sticker", "text": ""}, "[sticker]"),
    ],
)
def test_previews_say_what_a_message_that_is_not_a_text_holds(message, shown):
    assert preview_text(message) == shown
