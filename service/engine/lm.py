"""A language model over ONNX Runtime: scoring, next-word completion and sampled generation (torch-free).

Every request is a search over the model's rows: admission runs its prefix through the prompt graph (all admitted
prefixes in one call), which gives the next-token distribution and the state after it; each later iteration feeds
every live row's last token to the step graph in one call. A search says how many rows it has, which tokens they
feed, and, given their next-token log-probs, which rows continue (`advance` returns each new row's parent), so
`LMBatch` here and the service's iteration-level scheduler (`batching/lm.py`) drive every search the same way:

- `ScoreSearch`: no rows; the prompt graph's log-prob of each next token is the answer.
- `SampleSearch`: one row; greedy or seeded sampling with temperature, top-k and top-p, stop strings, EOS.
  Its random numbers come from its own generator, so with a seed the sample does not depend on the batch.
- `WordSearch`: the k most likely next words, a best-first search over pieces that completes the word the
  prefix ends inside (a keyboard's suggestion); a word's probability includes its ending there.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.engine.decoding import TOP_K_INPUT
from service.engine.sessions import SessionOptions, make_session
from service.engine.text import _BYTE_LEVEL_DECODE, BOS_ID, EOS_ID, PAD_ID, UNK_ID, TextEncoder, pad_batch

# Scripts written without spaces between words: each of their pieces is taken as a word of its own.
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN", "IDEOGRAPHIC")
NEVER_GENERATED = (PAD_ID, UNK_ID, BOS_ID)
MAX_WORD_PIECES = 16  # a small vocabulary spells a long word in many pieces


@dataclass(frozen=True)
class SampleOptions:
    max_tokens: int = 32
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh seed, reported with the result
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)


@dataclass(frozen=True)
class LMItem:
    """One queued request: its prefix as ids (BOS first) and what to do with it."""

    ids: list[int]
    task: str  # "score", "complete" or "generate"
    options: Any = None  # SampleOptions for generate, the number of words for complete
    partial: str = ""  # complete: the part of a word the prefix ends with
    truncated: bool = False


@dataclass
class Scored:
    tokens: list[str]  # the pieces and "</s>"
    token_ids: list[int]
    log_probs: list[float]  # natural log, one per token
    log_prob: float
    perplexity: float
    truncated: bool


@dataclass
class Completion:
    partial: str
    words: list[tuple[str, float]]  # most likely first


@dataclass
class Generation:
    text: str  # the continuation, as it follows the prefix
    token_ids: list[int]
    log_probs: list[float]  # the model's log-prob of each generated token
    finish_reason: str  # "length", "stop" or "eos"
    seed: int
    prompt_tokens: int
    encoder: TextEncoder = field(repr=False, compare=False)

    @property
    def tokens(self) -> list[str]:
        return self.encoder.tokens(self.token_ids)


@dataclass
class PromptOutput:
    token_log_probs: np.ndarray  # (B, T): log-prob of each next input token; the last real column is unused
    log_probs: np.ndarray  # (B, V) after each row's last token
    states: dict[str, np.ndarray]  # each (B, layers, hidden)


class LMRunner:
    """The prompt and step graphs; learns the state names from them."""

    def __init__(self, prompt_session: Any, step_session: Any) -> None:
        self.prompt_session, self.step_session = prompt_session, step_session
        outputs = [o.name for o in prompt_session.get_outputs()]
        self.state_names = [n[: -len("_out")] for n in outputs if n.endswith("_out")]
        step_inputs = [i.name for i in step_session.get_inputs()]
        missing = {"tokens", *self.state_names} - set(step_inputs)
        if {"token_log_probs", "log_probs"} - set(outputs) or missing:
            raise ValueError("prompt graph must output token_log_probs, log_probs and states; step graph must take "
                             f"tokens and the same states (missing {sorted(missing)})")
        self.step_inputs = step_inputs
        self._step_outputs = ["log_probs", *(f"{n}_out" for n in self.state_names)]

    def prompt(self, seqs: Sequence[Sequence[int]]) -> PromptOutput:
        ids, lengths = pad_batch(seqs)
        if len(seqs) == 0:
            raise ValueError("cannot run an empty batch")
        out = dict(zip([o.name for o in self.prompt_session.get_outputs()],
                       self.prompt_session.run(None, {"ids": ids, "lengths": lengths}), strict=True))
        return PromptOutput(out["token_log_probs"], out["log_probs"], {n: out[f"{n}_out"] for n in self.state_names})

    def step(self, tokens: np.ndarray, states: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """tokens (R,) -> log_probs (R, V), next states."""
        feeds = {"tokens": np.asarray(tokens, dtype=np.int64), **states, TOP_K_INPUT: np.array([1], dtype=np.int64)}
        out = self.step_session.run(self._step_outputs, {n: feeds[n] for n in self.step_inputs})
        return out[0], dict(zip(self.state_names, out[1:], strict=True))


class LMSearch(Protocol):
    done: bool

    @property
    def rows(self) -> int:
        """Rows it steps now (0 once done)."""
        ...

    @property
    def max_rows(self) -> int:
        """The most rows it will ever have (what admission reserves)."""
        ...

    def start(self, log_probs: np.ndarray, token_log_probs: np.ndarray) -> np.ndarray:
        """After the prompt: log_probs (V,) next, token_log_probs (n,) of its own tokens; -> parents (all 0)."""
        ...

    def tokens(self) -> np.ndarray: ...

    def advance(self, log_probs: np.ndarray) -> np.ndarray:
        """log_probs (rows, V) -> for every next row, the row it continues."""
        ...

    def certain(self) -> list[int]: ...

    def result(self) -> Any: ...


class ScoreSearch:
    """The prefix's own tokens and EOS, scored by the prompt graph alone."""

    max_rows = rows = 0

    def __init__(self, ids: list[int], encoder: TextEncoder, truncated: bool) -> None:
        self.ids, self.encoder, self.truncated = ids, encoder, truncated
        self.done = False
        self._result: Scored | None = None

    def start(self, log_probs: np.ndarray, token_log_probs: np.ndarray) -> np.ndarray:
        values = [*map(float, token_log_probs), float(log_probs[EOS_ID])]
        total = math.fsum(values)
        ids = [*self.ids[1:], EOS_ID]
        self._result = Scored(self.encoder.tokens(ids[:-1]) + ["</s>"], ids, values, total,
                              math.exp(-total / len(values)), self.truncated)
        self.done = True
        return np.zeros(0, dtype=np.int64)

    def tokens(self) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def advance(self, log_probs: np.ndarray) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)

    def certain(self) -> list[int]:
        return []

    def result(self) -> Scored:
        assert self._result is not None, "scored before the prompt ran"
        return self._result


def choose_token(log_probs: np.ndarray, options: SampleOptions, rng: np.random.Generator) -> int:
    """One token from a row's log-probs: argmax at temperature 0, else a draw after temperature, top-k and top-p.

    The choice depends only on the row's values and the draw: candidates kept by top-k or top-p are ordered by
    probability, then id; with neither, the draw walks the vocabulary in id order (no sort: the common case)."""
    banned = list(NEVER_GENERATED) + ([EOS_ID] if options.ignore_eos else [])
    logits = log_probs.astype(np.float64)
    logits[banned] = -np.inf
    if options.temperature == 0:
        return int(np.argmax(logits))
    logits /= options.temperature
    if options.top_k and options.top_k < len(logits) - len(banned):
        top = np.argpartition(-logits, options.top_k - 1)[: options.top_k]
        kth = logits[top].min()
        top = np.flatnonzero(logits >= kth)  # every tie at the k-th value, then the lowest ids among them
        order = top[np.lexsort((top, -logits[top]))][: options.top_k]
    elif options.top_p < 1.0:
        order = np.argsort(-logits, kind="stable")  # by probability, equal ones by id
    else:
        order = np.arange(len(logits))
    probs = np.exp(logits[order] - logits[order].max())
    cumulative = np.cumsum(probs)
    if options.top_p < 1.0:
        if not (options.top_k and options.top_k < len(logits) - len(banned)):
            order = order[: np.count_nonzero(np.isfinite(logits))]
            cumulative = cumulative[: len(order)]
        keep = int(np.searchsorted(cumulative, options.top_p * cumulative[-1])) + 1  # fewest reaching top_p
        order, cumulative = order[:keep], cumulative[:keep]
    u = rng.random() * cumulative[-1]
    return int(order[min(int(np.searchsorted(cumulative, u, side="right")), len(order) - 1)])


def draw_rows(log_probs: np.ndarray, options: Sequence[SampleOptions], rngs: Sequence[np.random.Generator]
              ) -> np.ndarray:
    """`choose_token` for many rows at once, when none asks for top-k or top-p: the same arithmetic row by row (an
    elementwise exp, a cumulative sum along the row, one draw from each row's own generator), so each row gets the
    token it would get alone."""
    logits = log_probs.astype(np.float64)
    logits[:, list(NEVER_GENERATED)] = -np.inf
    logits[[i for i, o in enumerate(options) if o.ignore_eos], EOS_ID] = -np.inf
    temperature = np.array([o.temperature for o in options])
    tokens = np.empty(len(options), dtype=np.int64)
    greedy = temperature == 0
    if greedy.any():
        tokens[greedy] = np.argmax(logits[greedy], axis=1)
    hot = np.flatnonzero(~greedy)
    if len(hot):
        z = logits[hot] / temperature[hot, None]
        cumulative = np.cumsum(np.exp(z - z.max(axis=1, keepdims=True)), axis=1)
        u = np.array([rngs[i].random() for i in hot.tolist()]) * cumulative[:, -1]
        tokens[hot] = np.minimum((cumulative <= u[:, None]).sum(axis=1), logits.shape[1] - 1)
    return tokens


class SampleSearch:
    """One continuation, a token per step, until max_tokens, a stop string or EOS."""

    max_rows = 1

    def __init__(self, options: SampleOptions, encoder: TextEncoder, prompt_tokens: int) -> None:
        self.options, self.encoder, self.prompt_tokens = options, encoder, prompt_tokens
        self.seed = options.seed if options.seed is not None else secrets.randbits(63)
        self.rng = np.random.default_rng(self.seed)
        self.done = False
        self.finish_reason = "length"
        self._tokens: list[int] = []
        self._log_probs: list[float] = []
        self._text = ""

    @property
    def rows(self) -> int:
        return 0 if self.done else 1

    def start(self, log_probs: np.ndarray, token_log_probs: np.ndarray) -> np.ndarray:
        return self.advance(log_probs[None])

    def tokens(self) -> np.ndarray:
        return np.array(self._tokens[-1:], dtype=np.int64)

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.encoder.tokenizer.decode(list(ids), skip_special_tokens=True))

    @property
    def plain(self) -> bool:
        """Sampled without top-k or top-p: `draw_rows` can draw its token with other rows'."""
        return not self.options.top_k and self.options.top_p >= 1.0

    def advance(self, log_probs: np.ndarray) -> np.ndarray:
        return self.take(choose_token(log_probs[0], self.options, self.rng), log_probs[0])

    def take(self, y: int, log_probs: np.ndarray) -> np.ndarray:
        """Append the chosen token (its log-prob read from the row's `log_probs`); -> the next row's parent."""
        if y == EOS_ID:
            self.done, self.finish_reason = True, "eos"
            return np.zeros(0, dtype=np.int64)
        self._tokens.append(y)
        self._log_probs.append(float(log_probs[y]))
        if self.options.stop:  # the text so far is needed only to look for them
            self._text = self._decode(self._tokens)
            cut = min((i for i in (self._text.find(s) for s in self.options.stop) if i >= 0), default=-1)
            if cut >= 0:
                self._text, self.done, self.finish_reason = self._text[:cut], True, "stop"
        if len(self._tokens) >= self.options.max_tokens:
            self.done = True
        return np.zeros(self.rows, dtype=np.int64)

    def certain(self) -> list[int]:
        """Every token so far, but those whose text may be the start of a stop string (held until it is not), or,
        once a stop string ended the text, those whose text goes past it (the result's text is what a stream shows)."""
        if not self.options.stop or (self.done and self.finish_reason != "stop"):
            return list(self._tokens)
        text = self._text
        if self.done:
            limit = len(text)
        else:
            limit = len(text) - max((n for s in self.options.stop for n in range(1, len(s)) if text.endswith(s[:n])),
                                    default=0)
        n = len(self._tokens)
        while n > 0 and len(self._decode(self._tokens[:n])) > limit:
            n -= 1
        return self._tokens[:n]

    def result(self) -> Generation:
        text = self._text if self.options.stop else self._decode(self._tokens)
        return Generation(text, list(self._tokens), list(self._log_probs), self.finish_reason, self.seed,
                          self.prompt_tokens, self.encoder)


def _unspaced(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(UNSPACED_SCRIPTS)


def _word_char(ch: str) -> bool:
    return ch.isalnum() or unicodedata.category(ch).startswith("M")


class WordTable:
    """What each piece of the vocabulary can do in a word: start one, continue one; and its text."""

    def __init__(self, encoder: TextEncoder) -> None:
        size = encoder.vocab_size
        self.starts = np.zeros(size, dtype=bool)
        self.continues = np.zeros(size, dtype=bool)
        self.texts: list[str] = []
        for i in range(size):
            piece = encoder.tokenizer.id_to_token(i) or ""
            raw = bytes(_BYTE_LEVEL_DECODE.get(ch, ord(ch) % 256) for ch in piece) if i > EOS_ID else b""
            spaced = raw[:1] == b" "
            rest = raw[1:] if spaced else raw
            text = rest.decode("utf-8", errors="replace")
            self.texts.append(text)
            if not rest:
                self.starts[i] = spaced  # a bare space: a word begins, its letters come in the pieces after it
                continue
            if 0x80 <= rest[0] < 0xC0:  # the remaining bytes of a character another piece began
                self.continues[i] = not spaced
                continue
            first = text[0]
            if first == "\ufffd":  # the first bytes of a character: decides nothing yet, may start or continue
                self.starts[i] = spaced
                self.continues[i] = not spaced
            elif _word_char(first):
                self.starts[i] = spaced or _unspaced(first)
                self.continues[i] = not spaced and not _unspaced(first)
        self.ends = ~self.continues  # after a whole word, any of these (EOS included) ends it
        self._compatible: dict[str, np.ndarray] = {}

    def compatible(self, rest: str) -> np.ndarray:
        """Pieces whose text is a start of `rest` or starts with it (the part of the typed word still to match)."""
        if rest not in self._compatible:
            if len(self._compatible) > 256:
                self._compatible.clear()
            self._compatible[rest] = np.array([t.startswith(rest) or rest.startswith(t) or "\ufffd" in t
                                               for t in self.texts], dtype=bool)
        return self._compatible[rest]


def split_partial(text: str) -> tuple[str, str]:
    """(context, the part of a word the text ends inside); "" when it ends with a space, punctuation or a character
    of a script without spaces."""
    n = len(text)
    while n > 0 and _word_char(text[n - 1]) and not _unspaced(text[n - 1]):
        n -= 1
    return text[:n], text[n:]


def completion_width(k: int) -> int:
    """Paths a completion keeps per step: twice the words asked for, 8 to 32."""
    return min(max(2 * k, 8), 32)


@dataclass
class _Beam:
    ids: list[int]
    log_prob: float
    text: str  # the word so far, normalized as the tokenizer writes it


class WordSearch:
    """Best-first search over pieces for the k most probable next words that start with the typed part.

    A word's probability is the sum over the piece paths that spell it of P(pieces) x P(a piece that ends a word
    comes next). A path whose probability falls below the k-th best word found cannot add a better word, so the
    search stops once no kept path can."""

    def __init__(self, k: int, partial: str, table: WordTable, encoder: TextEncoder, width: int = 0) -> None:
        self.k, self.partial, self.table, self.encoder = k, partial, table, encoder
        self.width = width or completion_width(k)
        self.done = False
        self._beams: list[_Beam] = [_Beam([], 0.0, "")]
        self._words: dict[str, float] = {}

    @property
    def rows(self) -> int:
        return 0 if self.done else len(self._beams)

    @property
    def max_rows(self) -> int:
        return self.width

    def start(self, log_probs: np.ndarray, token_log_probs: np.ndarray) -> np.ndarray:
        return self.advance(log_probs[None])

    def tokens(self) -> np.ndarray:
        return np.array([b.ids[-1] for b in self._beams], dtype=np.int64)

    def _bound(self) -> float:
        """log of the k-th best word's probability so far (-inf until k are found)."""
        if len(self._words) < self.k:
            return -math.inf
        return math.log(sorted(self._words.values(), reverse=True)[self.k - 1])

    def _whole(self, beam: _Beam) -> bool:
        return bool(beam.text) and not beam.text.endswith("\ufffd") and beam.text.startswith(self.partial)

    def advance(self, log_probs: np.ndarray) -> np.ndarray:
        table, candidates = self.table, []
        for row, beam in enumerate(self._beams):
            lp = log_probs[row].astype(np.float64)
            if self._whole(beam):
                ends = np.logaddexp.reduce(lp[table.ends])
                self._words[beam.text] = self._words.get(beam.text, 0.0) + math.exp(beam.log_prob + ends)
            if len(beam.ids) >= MAX_WORD_PIECES or (beam.text and _unspaced(beam.text[-1])):
                continue
            allowed = table.continues if beam.ids else table.starts
            if len(beam.text) < len(self.partial):
                allowed = allowed & table.compatible(self.partial[len(beam.text):])
            ids = np.flatnonzero(allowed)
            if not len(ids):
                continue
            best = ids[np.argsort(-lp[ids], kind="stable")[: self.width]]
            candidates += [(beam.log_prob + float(lp[i]), row, int(i)) for i in best]
        bound = self._bound()
        beams: list[_Beam] = []
        parents: list[int] = []
        for total, row, i in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
            if len(beams) == self.width or total <= bound:
                break
            path = [*self._beams[row].ids, i]
            text = str(self.encoder.tokenizer.decode(path, skip_special_tokens=True)).lstrip()
            known = text.rstrip("\ufffd")
            if not (known.startswith(self.partial) or self.partial.startswith(known)):
                continue  # a piece of partial bytes that did not match after all
            beams.append(_Beam(path, total, text))
            parents.append(row)
        self._beams = beams
        self.done = not beams
        return np.array(parents, dtype=np.int64)

    def certain(self) -> list[int]:
        return []

    def result(self) -> Completion:
        best = sorted(self._words.items(), key=lambda w: (-w[1], w[0]))[: self.k]
        return Completion(self.partial, [(w, float(p)) for w, p in best])


class LMBatch:
    """Searches stepping together: their live rows' states, in the order of `searches` (each holds `rows` rows)."""

    def __init__(self, runner: LMRunner) -> None:
        self.runner = runner
        self.searches: list[LMSearch] = []
        self.states: dict[str, np.ndarray] = {}

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.searches)

    def admit(self, seqs: Sequence[Sequence[int]], searches: Sequence[LMSearch]) -> None:
        """Run the prefixes through the prompt graph together; each search takes its first step on its own row."""
        if not searches:
            return
        out = self.runner.prompt(seqs)
        new_rows: list[int] = []
        for i, (seq, search) in enumerate(zip(seqs, searches, strict=True)):
            parents = search.start(out.log_probs[i], out.token_log_probs[i, : len(seq) - 1])
            new_rows += [i] * len(parents)
        take = np.array(new_rows, dtype=np.int64)
        self.states = {k: np.concatenate([self.states[k], v[take]]) if k in self.states else v[take]
                       for k, v in out.states.items()}
        self.searches.extend(searches)

    def step(self) -> None:
        """One step-graph call for every live row."""
        live = [s for s in self.searches if s.rows]
        if not live:
            return
        tokens = np.concatenate([s.tokens() for s in live])
        log_probs, states = self.runner.step(tokens, self.states)
        starts = np.cumsum([0, *(s.rows for s in live)])[:-1]
        plain = {i: s for i, s in enumerate(live) if isinstance(s, SampleSearch) and s.plain}
        drawn: dict[int, int] = {}
        if plain:  # one vectorized draw for every plain sampler's row
            rows = starts[list(plain)]
            drawn = dict(zip(plain, draw_rows(log_probs[rows], [p.options for p in plain.values()],
                                              [p.rng for p in plain.values()]).tolist(), strict=True))
        follow = []
        for i, (s, start) in enumerate(zip(live, starts, strict=True)):
            own = log_probs[start: start + s.rows]
            follow.append(start + (plain[i].take(drawn[i], own[0]) if i in plain else s.advance(own)))
        index = np.concatenate(follow)
        self.states = {k: v[index] for k, v in states.items()}

    def drop(self, leaving: Sequence[LMSearch]) -> None:
        """Remove searches (finished, or their client has gone) and their rows."""
        gone = {id(s) for s in leaving}
        keep: list[int] = []
        start = 0
        for s in self.searches:
            if id(s) not in gone:
                keep += range(start, start + s.rows)
            start += s.rows
        self.searches = [s for s in self.searches if id(s) not in gone]
        self.states = {k: v[np.array(keep, dtype=np.int64)] for k, v in self.states.items()}


class LMRuntime:
    """Tokenize prefixes, run the searches, detokenize (shared by `seqserve evaluate`, the bench and the service)."""

    def __init__(self, version_dir: Path, config: dict[str, Any], opts: SessionOptions | None = None) -> None:
        self.config = config
        self.max_length = int(config["max_length"])
        self.encoder = TextEncoder.load(version_dir / config["tokenizers"]["text"], self.max_length)
        opts = opts or SessionOptions()
        self.runner = LMRunner(make_session(version_dir / config["graphs"]["prompt"], opts),
                               make_session(version_dir / config["graphs"]["step"], opts))
        self._table: WordTable | None = None

    @property
    def provider(self) -> str:
        return str(self.runner.prompt_session.get_providers()[0])

    @property
    def table(self) -> WordTable:
        if self._table is None:
            self._table = WordTable(self.encoder)
        return self._table

    def _prefix(self, text: str, keep_end: bool) -> tuple[list[int], bool]:
        """BOS and the text's pieces; a text too long keeps its end (what comes next depends on it) or its start."""
        ids = self.encoder.tokenizer.encode(text, add_special_tokens=False).ids if text.strip() else []
        room = self.max_length - 1
        truncated = len(ids) > room
        if truncated:
            ids = ids[-room:] if keep_end else ids[:room]
        return [BOS_ID, *ids], truncated

    def item(self, text: str, task: str, options: Any = None) -> LMItem:
        """What to queue for a text: its ids (BOS first) and, to complete a word, the part typed so far."""
        if task == "complete":
            context, partial = split_partial(text)
            normalizer = self.encoder.tokenizer.normalizer
            partial = normalizer.normalize_str(partial) if normalizer is not None and partial else partial
            ids, truncated = self._prefix(context.rstrip(), keep_end=True)
            return LMItem(ids, task, options, partial, truncated)
        ids, truncated = self._prefix(text, keep_end=task != "score")
        return LMItem(ids, task, options, truncated=truncated)

    def rows_for(self, item: LMItem) -> int:
        """The most rows the item's search will hold (what admission reserves), without making the search."""
        if item.task == "complete":
            return completion_width(int(item.options))
        return 1 if item.task == "generate" else 0

    def search(self, item: LMItem) -> LMSearch:
        if item.task == "score":
            return ScoreSearch(item.ids, self.encoder, item.truncated)
        if item.task == "complete":
            return WordSearch(int(item.options), item.partial, self.table, self.encoder)
        if item.task == "generate":
            return SampleSearch(item.options, self.encoder, len(item.ids) - 1)
        raise ValueError(f"unknown task {item.task!r}")

    def run(self, items: Sequence[LMItem]) -> list[Any]:
        """A static batch: every prefix in one prompt call, then steps until every search is done."""
        if not items:
            return []
        batch = LMBatch(self.runner)
        searches = [self.search(i) for i in items]
        batch.admit([i.ids for i in items], searches)
        while batch.rows:
            batch.step()
        return [s.result() for s in searches]

    def score(self, texts: Sequence[str]) -> list[Scored]:
        return self.run([self.item(t, "score") for t in texts])

    def complete(self, texts: Sequence[str], k: int = 5) -> list[Completion]:
        return self.run([self.item(t, "complete", k) for t in texts])

    def generate(self, texts: Sequence[str], options: SampleOptions = SampleOptions()) -> list[Generation]:
        return self.run([self.item(t, "generate", options) for t in texts])

    def smoke_test(self) -> None:
        """One of each task on made-up text, e.g. to check that quantized graphs still run."""
        self.score(["a short check"])
        self.complete(["a short ch", "x "], k=2)
        self.generate(["a"], SampleOptions(max_tokens=3, seed=0))
