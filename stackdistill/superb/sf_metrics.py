"""SUPERB SF metrics: slot-type F1 and slot-value CER, as s3prl/downstream/ctc/metric.py.

Both read decoded strings in which a slot is written `B-<type> <value> E-<type>` (what
`tokens_to_text` makes of the slot tokens, as s3prl's CharacterTextSlotEncoder.decode).
- slot-type F1 (metric.py slot_type_f1): per utterance, precision and recall of the SET of
  slot types (1 when neither side has a slot, 0 when only one side has), then the mean F1
  over utterances;
- slot-value CER (metric.py slot_value_cer): for each reference slot, the hypothesis value of
  the same type with the lowest CER ("" when the type is absent), then the total character
  edit distance over the total reference-value length.
Hypothesis values have nested tags removed (metric.py clean); reference values are taken as
they are. Both return fractions (SUPERB prints them as percentages).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from stackdistill.superb.metrics import edit_distance

EOS = "<eos>"
_SLOT = re.compile(r"B\-(\S+) (.+?) E\-\1")


def tokens_to_text(tokens: Sequence[str]) -> str:
    """Slot-filling tokens -> s3prl's decoded string (`B-x ` and ` E-x` around values)."""
    pieces = []
    for token in tokens:
        if token == EOS:
            break
        if token.startswith("B-"):
            pieces.append(token + " ")
        elif token.startswith("E-"):
            pieces.append(" " + token)
        else:
            pieces.append(token)
    return "".join(pieces)


def _clean(text: str) -> str:
    """Drops slot tags from a value (metric.py clean)."""
    return re.sub(r" E\-(\S+)", "", re.sub(r"B\-(\S+) ", "", text))


def slots(text: str, hypothesis: bool = False) -> dict[str, list[str]]:
    """Slot type -> its values, in order of appearance (hypothesis values cleaned)."""
    found: dict[str, list[str]] = {}
    for slot_type, value in _SLOT.findall(re.sub(r" +", " ", text)):
        found.setdefault(slot_type, []).append(_clean(value) if hypothesis else value)
    return found


def _f1(hyp: dict[str, list[str]], ref: dict[str, list[str]]) -> float:
    if not hyp and not ref:
        return 1.0
    if not hyp or not ref:
        return 0.0
    recall = sum(t in hyp for t in ref) / len(ref)
    precision = sum(t in ref for t in hyp) / len(hyp)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def slot_type_f1(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean over utterances of the F1 between hypothesis and reference slot-type sets."""
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    scores = [_f1(slots(h, True), slots(r)) for h, r in zip(hypotheses, references)]
    return sum(scores) / len(scores)


def _cer(hypothesis: str, reference: str) -> float:
    return edit_distance(reference, hypothesis) / len(reference)


def slot_value_cer(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Character error rate of slot values, each matched to its best same-type hypothesis."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    errors = length = 0
    for h, r in zip(hypotheses, references):
        hyp = slots(h, True)
        for slot_type, values in slots(r).items():
            for value in values:
                candidates = hyp.get(slot_type, [])
                best = min(candidates, key=lambda v: _cer(v, value)) if candidates else ""
                errors += edit_distance(value, best)
                length += len(value)
    if length == 0:
        raise ValueError("the references hold no slot: the slot-value CER is undefined")
    return errors / length
