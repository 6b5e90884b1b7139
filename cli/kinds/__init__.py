"""The CLI's registry of model kinds: `seqserve train KIND` -> (help, its options, its run).

Adding a kind: a module beside this one (`add_options`, `job`) and one line in `TRAIN`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

from cli.kinds import classifier, lm, tagger, translator


class TrainCommand(NamedTuple):
    help: str
    add_options: Callable[[argparse.ArgumentParser], None]
    job: Callable[[argparse.Namespace], Any]  # the kind's training job (training.kind.Job)


TRAIN: dict[str, TrainCommand] = {
    "classifier": TrainCommand("recurrent text classifier", classifier.add_options, classifier.job),
    "translator": TrainCommand("Seq2Seq translator with attention", translator.add_options, translator.job),
    "tagger": TrainCommand("sequence tagger (slot filling, NER) with an optional intent head", tagger.add_options,
                           tagger.job),
    "lm": TrainCommand("recurrent language model (next words, scoring, generation)", lm.add_options, lm.job),
}
