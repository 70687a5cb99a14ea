"""English sentences for the synthetic corpus, generated from word lists and a small grammar.

Templates cover statements, questions, commands, exclamations, lists, numbers and clauses
joined by commas, with interjections ("Well, ...") - so espeak-ng produces pauses of
several lengths - and word lists chosen for visible articulation: bilabials (p b m),
labiodentals (f v), th, sh/ch, rounded (who, blue, moon, go) and spread (see, cheese)
vowels, open vowels (father, hot, car).

:func:`generate_sentences` gives distinct sentences deterministically for a seed (the
grammar has millions of combinations, so a few thousand distinct ones are cheap).

Example::

    >>> generate_sentences(3, seed=0)
    ['Maybe the purple boat moved over the bridge.', ...]
"""
from __future__ import annotations

from typing import List

import numpy as np

NAMES = ("Anna", "Bob", "Maria", "Peter", "Sophie", "Victor", "Fiona", "Thomas", "Julia",
         "Mike", "Olivia", "Bruno", "Paula", "Matthew", "Zoe", "George", "Hugo", "Martha",
         "Ruth", "Walter", "Emma", "Joe", "Lucy", "Samuel", "Chloe", "Oscar", "Ivy", "Mo")
ADJ = ("big", "small", "purple", "blue", "happy", "heavy", "cheap", "smooth", "rough", "warm",
       "cold", "bright", "dark", "quiet", "loud", "old", "new", "famous", "funny", "beautiful",
       "awful", "wooden", "golden", "frozen", "fresh", "foolish", "thoughtful", "huge", "tiny",
       "shiny", "soft", "sharp", "broken", "simple", "strange", "yellow", "green", "brown",
       "pink", "orange", "white", "black", "modern", "humble", "proud", "tall", "round",
       "square", "lovely", "muddy", "wise", "polite", "rapid", "deep", "narrow", "wide",
       "calm", "noisy", "clever", "gentle", "patient", "lazy", "busy", "empty", "full")
NOUNS = ("boat", "book", "moon", "phone", "window", "apple", "cheese", "fish", "garden",
         "bridge", "table", "mother", "father", "baby", "puppy", "teacher", "doctor", "farmer",
         "machine", "music", "market", "mountain", "river", "forest", "village", "museum",
         "picture", "bottle", "pumpkin", "balloon", "umbrella", "blanket", "cupboard", "mirror",
         "voice", "movie", "shoe", "spoon", "room", "school", "pool", "tooth", "truth", "path",
         "thunder", "feather", "weather", "vase", "van", "violin", "piano", "bus", "map",
         "bag", "cup", "cake", "coffee", "tea", "juice", "soup", "bread", "butter", "pepper",
         "potato", "tomato", "banana", "orange", "computer", "camera", "chair", "shirt",
         "jacket", "watch", "clock", "key", "door", "wall", "roof", "beach", "ocean", "island",
         "city", "road", "car", "train", "plane", "ship", "horse", "cow", "sheep", "goose",
         "mouse", "monkey", "whale", "bee", "flower", "tree", "leaf", "stone", "box", "letter",
         "message", "question", "answer", "problem", "idea", "story", "song", "game", "plan",
         "menu", "office", "kitchen", "bedroom", "hospital", "airport", "station", "factory")
VERBS_PAST = ("moved", "bought", "found", "brought", "painted", "pushed", "pulled", "fixed",
              "washed", "watched", "opened", "closed", "dropped", "carried", "cooked", "mixed",
              "loved", "hated", "visited", "followed", "borrowed", "measured", "chose",
              "threw", "caught", "taught", "sold", "lost", "built", "broke", "shook", "took",
              "made", "kept", "left", "met", "saw", "heard", "thought about", "forgot",
              "remembered", "described", "photographed", "polished", "delivered", "moved past")
VERBS = ("move", "buy", "find", "bring", "paint", "push", "pull", "fix", "wash", "watch",
         "open", "close", "carry", "cook", "visit", "follow", "borrow", "measure", "choose",
         "throw", "catch", "teach", "sell", "build", "shake", "take", "make", "keep", "see",
         "hear", "describe", "polish", "deliver", "check", "share", "show", "feed", "move")
ADVERBS = ("quickly", "slowly", "carefully", "happily", "quietly", "loudly", "suddenly",
           "finally", "gently", "badly", "perfectly", "easily", "proudly", "honestly",
           "smoothly", "frankly", "politely", "barely", "openly", "warmly")
PREPS = ("over", "under", "behind", "beside", "near", "through", "across", "into", "from",
         "past", "around", "beyond", "toward", "along", "without", "with", "above", "below")
TIMES = ("yesterday", "this morning", "last week", "on Monday", "at noon", "every Friday",
         "tomorrow", "tonight", "in the evening", "before lunch", "after the movie",
         "in November", "two years ago", "right now", "at half past four", "on the weekend")
INTERJ = ("Well", "Oh", "So", "Actually", "You know", "Honestly", "Look", "Hmm", "By the way",
          "Of course", "Anyway", "Believe me", "Okay", "Wow", "Basically", "Frankly")
PRON = ("he", "she", "we", "they", "you", "I")
COLORS = ("blue", "green", "red", "white")
LETTERS = tuple("abcdefghijklmnopqrstuvxyz")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TAGS = ("wasn't it", "right", "I guess", "you know", "or so they told me")
ASIDES = ("apparently", "they say", "I think", "sadly", "which is fine", "more or less")
DETS = ("the", "a", "my", "your", "our", "that", "this", "every", "some", "her", "his")


def _pick(rng: np.random.Generator, words) -> str:
    return str(words[int(rng.integers(0, len(words)))])


def _np(rng: np.random.Generator) -> str:
    """A noun phrase: determiner, optional adjective(s), noun."""
    det = _pick(rng, DETS)
    n = _pick(rng, NOUNS)
    r = rng.random()
    if r < 0.45:
        adj = _pick(rng, ADJ) + " "
    elif r < 0.6:
        adj = _pick(rng, ADJ) + " " + _pick(rng, ADJ) + " "
    else:
        adj = ""
    if det == "a" and (adj or n)[0] in "aeiou":
        det = "an"
    return f"{det} {adj}{n}"


def _clause(rng: np.random.Generator) -> str:
    subj = _pick(rng, NAMES) if rng.random() < 0.4 else (
        _pick(rng, PRON) if rng.random() < 0.4 else _np(rng))
    s = f"{subj} {_pick(rng, VERBS_PAST)} {_np(rng)}"
    r = rng.random()
    if r < 0.35:
        s += f" {_pick(rng, PREPS)} {_np(rng)}"
    elif r < 0.55:
        s += f" {_pick(rng, TIMES)}"
    elif r < 0.7:
        s += f" {_pick(rng, ADVERBS)}"
    return s


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def sentence(rng: np.random.Generator) -> str:
    """One random sentence (with its final punctuation)."""
    k = int(rng.integers(0, 14))
    if k <= 3:
        s = _cap(_clause(rng)) + "."
    elif k == 4:
        s = f"{_cap(_clause(rng))}, and {_clause(rng)}."
    elif k == 5:
        s = f"{_cap(_clause(rng))}, but {_clause(rng)}."
    elif k == 6:
        s = f"{_pick(rng, INTERJ)}, {_clause(rng)}."
    elif k == 7:
        q = int(rng.integers(0, 4))
        if q == 0:
            who = _pick(rng, PRON + NAMES)
            s = f"Did {who} {_pick(rng, VERBS)} {_np(rng)} {_pick(rng, TIMES)}?"
        elif q == 1:
            s = f"Where is {_np(rng)}?"
        elif q == 2:
            s = f"Why would {_pick(rng, NAMES)} {_pick(rng, VERBS)} {_np(rng)}?"
        else:
            s = f"Could you {_pick(rng, VERBS)} {_np(rng)}, please?"
    elif k == 8:
        items = [_pick(rng, NOUNS) for _ in range(int(rng.integers(3, 6)))]
        s = f"We need {', '.join(items[:-1])}, and {items[-1]}."
    elif k == 9:
        n = int(rng.integers(2, 2000))
        s = f"{_cap(_np(rng))} costs {n} dollars, {_pick(rng, ASIDES)}."
    elif k == 10:
        s = f"Please {_pick(rng, VERBS)} {_np(rng)} {_pick(rng, PREPS)} {_np(rng)}."
    elif k == 11:
        phrase = f"{_pick(rng, ADJ)} {_pick(rng, NOUNS)}"
        art = "an" if phrase[0] in "aeiou" else "a"
        s = f"What {art} {phrase}{'!' if rng.random() < 0.7 else ', really.'}"
    elif k == 12:
        s = (f"{_cap(_np(rng))} that {_pick(rng, NAMES)} {_pick(rng, VERBS_PAST)} was "
             f"{_pick(rng, ADJ)}, {_pick(rng, TAGS)}.")
    else:  # GRID-like command
        s = (f"{_cap(_pick(rng, ['bin', 'lay', 'place', 'set']))} {_pick(rng, COLORS)} "
             f"{_pick(rng, ['at', 'by', 'in', 'with'])} {_pick(rng, LETTERS)} "
             f"{_pick(rng, DIGITS)} {_pick(rng, ['again', 'now', 'please', 'soon'])}.")
    return s


def generate_sentences(n: int, seed: int = 0) -> List[str]:
    """``n`` distinct sentences, a deterministic function of ``(n, seed)``."""
    rng = np.random.default_rng([seed, 11])
    seen, out = set(), []
    tries = 0
    while len(out) < n and tries < 50 * n + 100:
        s = sentence(rng)
        tries += 1
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
