"""Sentences for the synthetic speech: word-frequency sequences and what a voice demo hears.

Two sources, mixed by `Sentences`: random word sequences drawn from a real English frequency
list (flattened, so that the rarer of the top words still come up often enough to be learnt),
and templated demo phrases (commands, numbers, dates, times, names, questions). Every sentence is
written the way it is spoken (numbers in words), in sentence case with final punctuation: the text
espeak-ng reads is exactly the transcript the model learns.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path


def spoken_list(text: str) -> list[str]:
    """A word list written as one string (the lists below are long)."""
    return text.split()


ONES = spoken_list(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
)
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ORDINALS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip
MONTHS = spoken_list(
    "January February March April May June July August September October November December"
)
DAYS = spoken_list("Monday Tuesday Wednesday Thursday Friday Saturday Sunday")
FIRST_NAMES = spoken_list(
    "Alice Bob Carol David Emma Frank Grace Henry Isabel Jack Karen Liam Maria Noah Olivia "
    "Peter Quinn Rachel Sam Tina Victor Wendy Xavier Yuki Zoe Ahmed Priya Chen Fatima Lucas "
    "Sofia Omar Hannah Diego Mei Ivan Anna James Laura Daniel"
)
LAST_NAMES = spoken_list(
    "Smith Johnson Brown Garcia Miller Davis Wilson Anderson Taylor Thomas Moore Martin Lee "
    "Walker Hall Young King Wright Lopez Hill Scott Green Adams Baker Nelson Carter Mitchell"
)
CITIES = spoken_list(
    "London Paris Berlin Tokyo Chicago Boston Seattle Madrid Rome Sydney Toronto Dublin Denver "
    "Austin Cairo Lisbon Vienna Oslo Prague Mumbai"
)
ROOMS = ["kitchen", "bedroom", "living room", "bathroom", "office", "garage", "hallway", "garden"]
THINGS = [
    "lights",
    "music",
    "heating",
    "fan",
    "television",
    "radio",
    "alarm",
    "oven",
    "coffee machine",
    "dishwasher",
]

# Demo phrase templates: {n} a number, {name} a person, {city}, {room}, {thing}, {date}, {time},
# {day}. Questions end in "?", which also makes espeak-ng raise the pitch at the end.
TEMPLATES = [
    "Turn on the {thing} in the {room}.",
    "Turn off the {thing}.",
    "Set a timer for {n} minutes.",
    "Set an alarm for {time}.",
    "Remind me to call {name} on {day}.",
    "Call {name} {last}.",
    "Send a message to {name} saying I will be late.",
    "What is the weather like in {city}?",
    "What time is it in {city}?",
    "How far is it from {city} to {city2}?",
    "Play some music in the {room}.",
    "Add {n} eggs to the shopping list.",
    "My meeting with {name} is on {date}.",
    "The train leaves at {time}.",
    "Book a table for {n} people at {time}.",
    "Can you read my last message from {name}?",
    "What is {n} plus {n2}?",
    "How many days are there until {date}?",
    "Please open the door.",
    "Stop.",
    "Yes, please.",
    "No, thank you.",
    "What did {name} say about the report?",
    "Where is the nearest station?",
    "Is it going to rain tomorrow?",
    "The total comes to {n} dollars and {n2} cents.",
    "I was born on {date}.",
    "The code is {digits}.",
    "My phone number is {digits}.",
    "Increase the volume to {n} percent.",
    "Hello, my name is {name} {last}.",
    "Good morning, {name}. How are you today?",
    "Schedule a call with {name} for {day} at {time}.",
]


def number_words(n: int) -> str:
    """0 <= n < 1e6 in English words ("two thousand and twenty six" style, without "and")."""
    if n < 20:
        return ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return TENS[tens] + (f" {ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{number_words(thousands)} thousand" + (f" {number_words(rest)}" if rest else "")


def ordinal_words(n: int) -> str:
    """1 <= n < 100: "first", "twenty third"."""
    words = number_words(n).split()
    last = words[-1]
    if last in ORDINALS:
        words[-1] = ORDINALS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(y: int) -> str:
    """How years are read: "nineteen eighty four", "two thousand and five", "twenty twenty six"."""
    if 2000 <= y < 2010:
        return number_words(y)
    hi, lo = divmod(y, 100)
    return f"{number_words(hi)} " + (number_words(lo) if lo >= 10 else f"oh {ONES[lo]}")


# The templates as patterns, every field any text: they tell demo phrases from word sequences.
DEMO_PATTERNS = [
    re.compile(".+".join(re.escape(part) for part in re.split(r"\{\w+\}", t))) for t in TEMPLATES
]


def is_demo(text: str) -> bool:
    """Whether a sentence is a demo phrase (a filled-in template) rather than a word sequence."""
    return any(p.fullmatch(text) for p in DEMO_PATTERNS)


class Sentences:
    """Seeded sentence source. `words` is a frequency-ordered word list (most frequent first)."""

    def __init__(self, words: Sequence[str], seed: int, demo_share: float = 0.4) -> None:
        self.rng = random.Random(seed)
        self.words = list(words)
        # Zipf-flattened weights: rank^-0.6 instead of the natural ~rank^-1.
        self.weights = [(r + 1) ** -0.6 for r in range(len(self.words))]
        self.demo_share = demo_share

    def __call__(self, long: bool = False) -> str:
        if not long and self.rng.random() < self.demo_share:
            return self.demo()
        return self.word_sequence(self.rng.randint(18, 32) if long else self.rng.randint(2, 12))

    def word_sequence(self, n: int) -> str:
        words = self.rng.choices(self.words, self.weights, k=n)
        words = ["I" if w == "i" else w for w in words]
        end = "?" if self.rng.random() < 0.1 else "."
        return sentence_case(" ".join(words)) + end

    def demo(self) -> str:
        r = self.rng
        cities = r.sample(CITIES, 2)
        fields = {
            "n": number_words(r.choice([r.randint(1, 12), r.randint(13, 100), r.randint(1, 9999)])),
            "n2": number_words(r.randint(1, 99)),
            "name": r.choice(FIRST_NAMES),
            "last": r.choice(LAST_NAMES),
            "city": cities[0],
            "city2": cities[1],
            "room": r.choice(ROOMS),
            "thing": r.choice(THINGS),
            "day": r.choice(DAYS),
            "date": f"{r.choice(MONTHS)} {ordinal_words(r.randint(1, 31))} "
            f"{year_words(r.randint(1950, 2035))}",
            "time": self.time_words(),
            "digits": " ".join(ONES[r.randint(0, 9)] for _ in range(r.randint(3, 7))),
        }
        return r.choice(TEMPLATES).format(**fields)

    def time_words(self) -> str:
        hour, minute = self.rng.randint(1, 12), self.rng.choice([0, 5, 15, 30, 45, 10, 20, 50])
        if minute == 0:
            spoken = f"{number_words(hour)} o'clock"
        else:
            spoken = f"{number_words(hour)} {'oh ' if minute < 10 else ''}{number_words(minute)}"
        return spoken + self.rng.choice(["", "", " in the morning", " in the evening"])


def sentence_case(s: str) -> str:
    return s[:1].upper() + s[1:]


WORDS_FILE = Path(__file__).with_name("words.txt")
_WORD = re.compile(r"^[a-z]+(?:'[a-z]+)?$")


def frequency_words(n: int = 8000) -> list[str]:
    """The n most frequent plain English words, from train/words.txt (most frequent first)."""
    words = WORDS_FILE.read_text(encoding="utf-8").split()
    if n > len(words):
        raise ValueError(f"{WORDS_FILE} holds {len(words)} words, not {n}")
    return words[:n]


def write_frequency_words(n: int = 8000) -> None:
    """Writes train/words.txt: the n most frequent words of the `wordfreq` package that are
    lowercase letters with at most one apostrophe; single letters other than "a" and "i" are
    dropped (espeak-ng spells them out, and they would read as noise)."""
    from wordfreq import top_n_list

    out = []
    for w in top_n_list("en", n * 2):
        if _WORD.match(w) and (len(w) > 1 or w in ("a", "i")):
            out.append(w)
        if len(out) == n:
            break
    WORDS_FILE.write_text("\n".join(out) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_frequency_words()  # needs `pip install wordfreq`; the list is committed
