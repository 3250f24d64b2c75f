"""What a draft did (runtime/resident_draft.py, runtime/ngram_draft.py): counts for reports,
and the measurements both drafts choose their length from."""
from __future__ import annotations

DECAY = 0.9     # weight of the past in the moving averages below


def moving_average(old: float | None, new: float) -> float:
    return new if old is None else DECAY * old + (1 - DECAY) * new


def expected_tokens(a: float, k: int) -> float:
    """Tokens a round of k drafts gives when each tested draft is kept with probability a:
    1 + a + ... + a^(k-1) (the first disagreement's own sample included)."""
    return sum(a ** j for j in range(k))


class KeptRate:
    """The rate at which the caller keeps a drafted token it tests, decayed over rounds."""

    def __init__(self):
        self.kept = self.tested = 0.0

    def add(self, tested: int, kept: int) -> None:
        self.kept = DECAY * self.kept + kept
        self.tested = DECAY * self.tested + tested

    @property
    def value(self) -> float | None:
        return self.kept / self.tested if self.tested else None


class DraftCounts:
    """Rounds that drafted, plain decode steps taken instead, tokens drafted and kept."""

    def __init__(self):
        self.rounds = self.plain_steps = self.drafted = self.kept = 0

    def counted_plain(self) -> None:
        self.plain_steps += 1

    def record(self, drafted: int, emitted: int, kept: int) -> None:
        """Of `drafted` tokens, the caller emitted `emitted` samples, of which `kept` equalled
        the draft (each emitted sample tested one drafted token)."""
        self.rounds += 1
        self.drafted += drafted
        self.kept += kept

    def counts(self) -> dict:
        return {"rounds": self.rounds, "plain_steps": self.plain_steps, "drafted": self.drafted, "kept": self.kept}
