from service.engine.text import EOS_ID, PAD_ID, TextEncoder, pad_batch
from training.tokenizer import train_tokenizer

CORPUS = ["The film is great.", "A dull, tedious movie!", "我喜欢这部电影", "Un film très émouvant.",
          "Ein kleines Mädchen klettert."] * 20


def make(max_length=32, lowercase=False):
    return TextEncoder(train_tokenizer(CORPUS, vocab_size=400, lowercase=lowercase), max_length)


def test_any_unicode_round_trips_without_unknown_tokens():
    enc = make(max_length=512)
    texts = ["我喜欢这部电影", "東京は晴れです", "emoji 😀👍🏽 mix", "مرحبا بالعالم", "e\u0301 combining", "Ⅻ ﬁ"]
    for ids in enc.ids(texts):
        assert 1 not in ids  # no <unk>: unseen characters fall back to bytes
        assert enc.decode(ids)  # decodes to something non-empty
    assert enc.decode(enc.ids(["我喜欢这部电影"])[0]) == "我喜欢这部电影"
    assert enc.decode(enc.ids(["emoji 😀👍🏽 mix"])[0]) == "emoji 😀👍🏽 mix"


def test_truncation_and_eos():
    enc = make(max_length=16)
    long_text = "great " * 1000
    assert len(enc.ids([long_text])[0]) == 16
    with_eos = enc.ids([long_text], add_eos=True)[0]
    assert len(with_eos) == 16 and with_eos[-1] == EOS_ID
    assert enc.ids([""]) == [[1]]  # an empty text still has one position


def test_lowercase_option_and_padding():
    enc = make(lowercase=True)
    assert enc.ids(["GREAT"]) == enc.ids(["great"])
    ids, lengths = pad_batch([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID]] and lengths.tolist() == [3, 1]


def test_chinese_is_read_character_by_character_and_decodes_without_spaces():
    from training.tokenizer import train_tokenizer

    zh = ["欢迎来北京。", "我是在北京学的中文。", "北京很大。", "我爱中文。", "欢迎回家。"] * 4
    tok = train_tokenizer(zh, 400)
    encoding = tok.encode("欢迎来北京。")
    assert [tok.decode([i]) for i in encoding.ids] == list("欢迎来北京。")
    for text in ["北京欢迎你。", "Hello 北京 123", "没见过的字龘。"]:
        assert tok.decode(tok.encode(text).ids) == text  # exact, no space between characters
    english = train_tokenizer(["a man rides a bike", "two dogs play"] * 10, 300)
    assert english.pre_tokenizer.__class__.__name__ == "ByteLevel"  # texts without CJK keep the plain pre-tokenizer
