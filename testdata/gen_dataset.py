#!/usr/bin/env python3
"""Synthetic preference dataset with a learnable rule (deterministic).

Rule: every `chosen` completion is built from a POSITIVE word pool and every
`rejected` completion from a NEGATIVE word pool, whatever the prompt says.
A tiny model trained with DPO only has to learn "prefer positive words after
these prompts", which it can, and the rule carries over to held-out prompts
(test prompts never occur in train).

Prompts are short synthetic reviews in one of several templates, e.g.
    "Review: the hotel had a small garden.\nSentiment:"
Completions start with a space (TRL convention: prompt + completion are
concatenated) and have 2-12 words; chosen and rejected lengths are drawn
independently so batches mix lengths. About 10% of the sentences contain
non-ASCII text (accents, CJK, emoji) so the byte-level path is exercised.

Usage:  /usr/bin/python3 testdata/gen_dataset.py [--seed 1234] [--out testdata/data]
Writes: train.jsonl (400 rows), test.jsonl (100 rows); columns prompt, chosen, rejected.
"""
import argparse
import json
import os
import random

POSITIVE = [
    "great", "wonderful", "excellent", "lovely", "amazing", "fantastic", "good",
    "happy", "delightful", "superb", "pleasant", "brilliant", "enjoyable",
    "perfect", "nice", "charming", "friendly", "beautiful", "fun", "glad",
]
NEGATIVE = [
    "terrible", "awful", "horrible", "bad", "boring", "sad", "poor", "dreadful",
    "annoying", "disappointing", "ugly", "broken", "rude", "slow", "messy",
    "nasty", "dull", "angry", "worst", "gloomy",
]

SUBJECTS = [
    "the movie", "this phone", "the hotel", "our dinner", "the concert",
    "this book", "the service", "the new update", "the train ride", "my laptop",
    "the museum", "this jacket", "the coffee", "the game", "the class",
    "the apartment", "this album", "the garden tour", "the pizza", "the show",
    "the bike", "the meeting", "this camera", "the flight", "the park",
]
HELD_OUT_SUBJECTS = [  # only in test prompts
    "the ferry", "this lamp", "the bakery", "the workshop", "the headphones",
]
PREDICATES = [
    "arrived on a Tuesday", "was longer than expected", "had a blue cover",
    "came with a manual", "started at seven", "was in the old town",
    "took about two hours", "used a lot of colors", "was next to the station",
    "had three parts", "was made last year", "needed a new battery",
    "was on the second floor", "had a small garden", "came in a paper box",
    "was full of people", "had a long queue", "was quiet in the morning",
    "changed the menu", "had a red door",
]
UNICODE_BITS = [
    "at the café", "with a naïve plot", "near the jalapeño stand", "über fast",
    "with 寿司 on the menu", "🙂 as promised", "for 12€", "in Zürich",
    "— as usual", "with crème brûlée",
]
TEMPLATES = [
    "Review: {s}\nSentiment:",
    "Review: {s}\nVerdict:",
    "Customer wrote: {s}\nHow did they feel?",
    "Feedback: {s}\nSummary:",
    "Comment: {s}\nOpinion:",
]


def sentence(rng, subjects):
    s = f"{rng.choice(subjects)} {rng.choice(PREDICATES)}"
    if rng.random() < 0.10:
        s += " " + rng.choice(UNICODE_BITS)
    return s + "."


def completion(rng, pool):
    n = rng.randint(2, 12)
    words = [rng.choice(pool) for _ in range(n)]
    if n >= 4 and rng.random() < 0.4:
        k = rng.randint(1, n - 2)
        words[k - 1] += ","
    end = rng.choice(["", ".", ".", "!"])
    return " " + " ".join(words) + end


def make(rng, n, subjects, exclude):
    rows, seen = [], set(exclude)
    while len(rows) < n:
        prompt = rng.choice(TEMPLATES).format(s=sentence(rng, subjects))
        if prompt in seen:
            continue
        seen.add(prompt)
        rows.append({
            "prompt": prompt,
            "chosen": completion(rng, POSITIVE),
            "rejected": completion(rng, NEGATIVE),
        })
    return rows


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=100)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    train = make(rng, a.n_train, SUBJECTS, ())
    test = make(rng, a.n_test, SUBJECTS + HELD_OUT_SUBJECTS, {r["prompt"] for r in train})
    write_jsonl(os.path.join(a.out, "train.jsonl"), train)
    write_jsonl(os.path.join(a.out, "test.jsonl"), test)
    print(f"wrote {len(train)} train and {len(test)} test rows to {a.out}")


if __name__ == "__main__":
    main()
