"""TextEncoder: readable token strings for byte-level pieces."""

from service.engine.text import TextEncoder
from training.tokenizer import train_tokenizer

CORPUS = ["fünf kleine hunde laufen über die straße", "der hund läuft", "zwei katzen schlafen"] * 20


def encoder() -> TextEncoder:
    return TextEncoder(train_tokenizer(CORPUS, vocab_size=300), max_length=64)


def test_pieces_that_split_a_character_show_their_bytes_and_the_completing_piece_shows_it():
    enc = encoder()
    for text in ["日本語", "🙂 fünf", "ein Hund läuft", "fünf hunde"]:
        ids = enc.ids([text])[0]
        tokens = enc.tokens(ids)
        assert len(tokens) == len(ids) and "\ufffd" not in "".join(tokens)
        readable = "".join(t for t in tokens if not t.startswith("<0x"))
        assert readable.strip() == enc.decode(ids)  # every character appears once, on the piece that completes it
    tokens = enc.tokens(enc.ids(["日"])[0])  # E6 97 A5: three pieces in a vocabulary that never saw it
    assert tokens[-3:] == ["<0xE6>", "<0x97>", "日"]


def test_whole_pieces_read_as_their_text():
    enc = encoder()
    ids = enc.ids(["der hund"])[0]
    assert "".join(enc.tokens(ids)).strip() == "der hund"
    assert all(not t.startswith("<0x") for t in enc.tokens(ids))
