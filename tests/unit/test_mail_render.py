"""Rendering and building mail, without any server."""

from __future__ import annotations

import email
import email.policy
from email.header import Header
from email.message import Message

import pytest

from pipeline.errors import HeaderInjection, MailError
from pipeline.mail.mailer import priority_for
from pipeline.mail.message import build_message, parse_addresses
from pipeline.mail.rendering import Rendered, TemplateRenderer
from pipeline.settings import Settings

ORDER = {
    "id": "A-1001",
    "currency": "EUR",
    "total": 59.9,
    "items": [
        {"sku": "MUG-1", "name": "Mug", "quantity": 2, "unit_price": 9.95},
        {"sku": "TEE-2", "name": "T-shirt", "quantity": 1, "unit_price": 40.0},
    ],
}
CONTEXTS = {
    "order_confirmation": {"customer": {"name": "Zoë Ørsted"}, "order": ORDER},
    "password_reset": {"customer": {"name": "王芳"}, "reset_url": "https://shop.example/r/abc", "valid_minutes": 30},
    "export_ready": {"export": {"name": "Q3 orders", "rows": 1200, "size": 48213, "url": "https://x/e.xlsx"}},
    "welcome": {"customer": {"name": "Sam"}, "login_url": "https://shop.example/login"},
}


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer()


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_every_shipped_template_renders_a_subject_text_and_html(renderer, name):
    rendered = renderer.render(name, CONTEXTS[name])
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.text.strip() and rendered.subject not in rendered.text
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")


def test_order_confirmation_lists_every_item_in_both_parts(renderer):
    rendered = renderer.render("order_confirmation", CONTEXTS["order_confirmation"])
    assert rendered.subject == "Your order A-1001 is confirmed"
    for part in (rendered.text, rendered.html):
        assert "Mug" in part and "T-shirt" in part and "59.90 EUR" in part and "Zoë Ørsted" in part
    assert rendered.html.count('<tr style="border-bottom:1px solid #f4f4f5;">') == 2


def test_html_is_autoescaped_and_text_is_not(renderer):
    context = {"customer": {"name": "<script>alert(1)</script>"}, "login_url": "https://x/?a=1&b=2"}
    rendered = renderer.render("welcome", context)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html and "<script>" not in rendered.html
    assert "<script>alert(1)</script>" in rendered.text


def test_a_missing_variable_is_an_error_naming_it(renderer):
    with pytest.raises(MailError, match=r"'password_reset.txt': 'reset_url' is undefined"):
        renderer.render("password_reset", {"customer": {"name": "x"}, "valid_minutes": 5})


def test_an_unknown_template_is_an_error_naming_it(renderer):
    with pytest.raises(MailError, match=r"'newsletter.txt' not found"):
        renderer.render("newsletter", {})


@pytest.mark.parametrize("name", ["../etc/passwd", "layout.html", "a/b", ""])
def test_a_template_name_cannot_leave_the_template_folder(renderer, name):
    with pytest.raises(MailError, match="not a plain name"):
        renderer.render(name, {})


def test_the_sandbox_refuses_unsafe_attribute_access(tmp_path):
    (tmp_path / "evil.txt").write_text(
        "{% block subject %}x{% endblock %}{% block body %}{{ ''.__class__.__mro__ }}{% endblock %}"
    )
    (tmp_path / "evil.html").write_text("x")
    with pytest.raises(MailError, match="failed"):
        TemplateRenderer([tmp_path]).render("evil", {})


def test_a_deploying_service_can_override_a_template(tmp_path):
    (tmp_path / "welcome.txt").write_text(
        "{% block subject %}Hi {{ customer.name }}{% endblock %}{% block body %}Ours.\n{% endblock %}"
    )
    (tmp_path / "welcome.html").write_text("<p>Ours</p>")
    rendered = TemplateRenderer([tmp_path]).render("welcome", {"customer": {"name": "Sam"}})
    assert rendered.subject == "Hi Sam" and rendered.text == "Ours.\n"


def test_a_text_template_without_subject_block_is_refused(tmp_path):
    (tmp_path / "bare.txt").write_text("{% block body %}Hello{% endblock %}")
    (tmp_path / "bare.html").write_text("<p>Hello</p>")
    with pytest.raises(MailError, match=r"'bare\.txt' has no '\{% block subject %\}'"):
        TemplateRenderer([tmp_path]).render("bare", {})


def test_a_line_break_put_into_the_subject_by_a_variable_is_refused(renderer):
    context = {"customer": {"name": "Eve\r\nBcc: victim@example.com"}, "login_url": "x"}
    with pytest.raises(HeaderInjection, match="subject"):
        renderer.render("welcome", context)


def build(**overrides):
    settings = Settings(mail_sender="Shop <shop@example.com>", mail_subject_prefix="[Shop] ")
    arguments = {"to": "Zoë Ørsted <zoe@example.com>", "message_id": "job-1", **overrides}
    return build_message(Rendered("Grüße", "Text ü\n", "<p>HTML ü</p>"), settings=settings, **arguments)


def arrived(envelope):
    """The message as a receiving mail client parses it."""
    return email.message_from_bytes(envelope.message.as_bytes(), policy=email.policy.default)


def test_the_message_is_multipart_alternative_text_then_html():
    envelope = build()
    assert envelope.message.as_bytes().isascii()
    message = arrived(envelope)
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain" and text.get_content() == "Text ü\n"
    assert html.get_content_type() == "text/html" and html.get_content() == "<p>HTML ü</p>"
    assert message["Subject"] == "[Shop] Grüße" and message["From"] == "Shop <shop@example.com>"
    assert message["To"] == "Zoë Ørsted <zoe@example.com>"
    assert message["Message-ID"] == "<job-1@example.com>" and message["Date"]


BODIES = [
    "plain\n",
    "a line ending in spaces   \nx=y\n.\n.a dot first\n",
    "é" * 200 + "\n" + "x" * 300 + "\t\n",
    "a tab at the edge" + "x" * 57 + "\t\nnext",
    "windows\r\nline ends\rand a lone carriage return\n",
    "\u2028 \x0c \x85 " + "😀" * 40,
]


@pytest.mark.parametrize("body", BODIES)
def test_a_body_of_any_text_reads_back_exactly_in_7_bit_lines_of_76_at_most(body):
    envelope = build_message(
        Rendered("s", body, body), settings=Settings(mail_sender="shop@example.com"), to="a@example.com", message_id="j"
    )
    wire = envelope.message.as_bytes()
    assert wire.isascii() and b"\r" not in wire.replace(b"\r\n", b"")
    for part in envelope.message.get_payload():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert max(len(line) for line in part.get_payload().split("\n")) <= 76
    text, html = arrived(envelope).iter_parts()
    expected = body.replace("\r\n", "\n").replace("\r", "\n")
    assert text.get_content() == expected and html.get_content() == expected


def test_bcc_is_in_the_envelope_only():
    envelope = build(cc="c@example.com", bcc=["b@example.com"], reply_to="r@example.com")
    assert envelope.recipients == ["zoe@example.com", "c@example.com", "b@example.com"]
    raw = envelope.message.as_string()
    assert "Bcc" not in raw and "b@example.com" not in raw
    assert arrived(envelope)["Reply-To"] == "r@example.com"


@pytest.mark.parametrize(
    ("field", "value"),
    [("to", "a@example.com\r\nBcc: evil@example.com"), ("cc", "x@example.com\nX: y"), ("reply_to", "r@x.com\r")],
)
def test_a_line_break_in_an_address_is_refused(field, value):
    with pytest.raises(HeaderInjection, match="header injection"):
        build(**{field: value})


def test_a_line_break_in_the_subject_is_refused():
    settings = Settings()
    with pytest.raises(HeaderInjection, match="subject"):
        build_message(Rendered("Hi\r\nBcc: x@y.z", "t", "h"), settings=settings, message_id="1", to="a@example.com")


@pytest.mark.parametrize("bad", ["not-an-address", "a@", "@example.com", "two words@example.com", "a@localhost"])
def test_an_invalid_address_is_refused_naming_it(bad):
    with pytest.raises(MailError, match="is not a valid address"):
        parse_addresses("to", bad)


def test_no_recipient_is_refused():
    with pytest.raises(MailError, match="at least one recipient"):
        build(to=[])


def test_password_reset_outranks_other_mail():
    assert priority_for("password_reset") > priority_for("order_confirmation") > priority_for("welcome")


@pytest.mark.parametrize(
    "subject",
    [
        "Ihre Bestellung über 3 Artikel ist unterwegs und kommt bald an, vielen Dank für Ihren Einkauf, Zoë",
        "王芳" * 60,
        "Zoë " + "x" * 200,
        "é",
        "plain words " * 20,
    ],
)
def test_a_subject_of_any_length_and_script_reads_back_exactly(subject):
    settings = Settings(mail_subject_prefix="[Shop] ")
    envelope = build_message(Rendered(subject, "t", "<p>h</p>"), settings=settings, message_id="j", to="a@example.com")
    parsed = email.message_from_bytes(envelope.message.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "[Shop] " + subject


def written_header(wire: bytes, name: bytes) -> bytes:
    """The header ``name`` as written on the wire, its folded lines included."""
    lines: list[bytes] = []
    for line in wire.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if lines and line[:1] in (b" ", b"\t"):
            lines.append(line)
        elif lines:
            break
        elif line.startswith(name + b": "):
            lines.append(line)
    return b"\r\n".join(lines)


@pytest.mark.parametrize("subject", ["Grüße", "Zoë Ørsted, your order", "注文 12", "😀", "é" * 19, "é" * 40])
def test_a_non_ascii_subject_is_written_as_the_email_packages_header_writes_it(subject):
    from pipeline.mail.smtp import WirePolicy

    wire = WirePolicy(linesep="\r\n")
    envelope = build_message(Rendered(subject, "t", "h"), settings=Settings(), message_id="j", to="a@example.com")
    alone = Message()
    alone["Subject"] = Header(subject, "utf-8", header_name="Subject")
    written = written_header(envelope.message.as_bytes(policy=wire), b"Subject")
    assert written and written == written_header(alone.as_bytes(policy=wire), b"Subject")


@pytest.mark.parametrize("breaker", ["\v", "\f", "\x00", "\x85", "\u2028", "\u2029", "\x1b"])
def test_a_subject_or_display_name_with_any_line_breaker_is_refused(breaker):
    settings = Settings()
    with pytest.raises(HeaderInjection, match=r"U\+"):
        build_message(Rendered(f"Hi{breaker}Bcc: x", "t", "h"), settings=settings, message_id="j", to="a@example.com")
    with pytest.raises(HeaderInjection, match=r"U\+"):
        build_message(Rendered("Hi", "t", "h"), settings=settings, message_id="j", to=f"Eve{breaker} <a@example.com>")


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("a" * 65 + "@example.com", "too long"),
        ("a@" + ("b" * 60 + ".") * 5 + "com", "too long"),
        ("a@exa_mple.com", "not a host name"),
        ("a@-example.com", "not a host name"),
    ],
)
def test_addresses_are_checked_before_any_smtp(address, complaint):
    with pytest.raises(MailError, match=complaint):
        parse_addresses("to", address)


def test_an_internationalised_domain_goes_out_in_idna_form():
    assert parse_addresses("to", "Zoë <zoe@bücher.example>") == [("Zoë", "zoe@xn--bcher-kva.example")]


def test_a_non_ascii_local_part_makes_a_utf8_mail_for_smtputf8():
    envelope = build_message(
        Rendered("Grüße", "t", "h"), settings=Settings(), message_id="j", to="Zoë <zoë@bücher.example>"
    )
    assert envelope.smtputf8 and envelope.recipients == ["zoë@xn--bcher-kva.example"]
    assert envelope.message["To"] == "Zoë <zoë@xn--bcher-kva.example>"
    ascii_only = build_message(Rendered("Hi", "t", "h"), settings=Settings(), message_id="j", to="a@example.com")
    assert not ascii_only.smtputf8


@pytest.mark.parametrize(
    "subject",
    ["Welcome", "Grüße", "plain words " * 20, "a  b  c ", "x" * 60, "=?utf-8?q?looks_encoded?=", "王芳" * 30],
)
@pytest.mark.parametrize(
    "to",
    ["a@example.com", "Zoë Ørsted <zoe@example.com>", [f"reader-{n}@example.com" for n in range(12)]],
)
def test_the_wire_policy_writes_a_mail_byte_for_byte_as_compat32(subject, to):
    from pipeline.mail.smtp import WirePolicy

    settings = Settings(mail_sender="Shop <shop@example.com>", mail_subject_prefix="[Shop] ")
    envelope = build_message(Rendered(subject, "Text ü\n", "<p>HTML</p>"), settings=settings, message_id="j", to=to)
    compat32 = email.policy.compat32.clone(linesep="\r\n")
    assert envelope.message.as_bytes(policy=WirePolicy(linesep="\r\n")) == envelope.message.as_bytes(policy=compat32)
