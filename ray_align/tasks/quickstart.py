"""The quickstart's task: a reward and a harm score anyone can read off the response text.

    helpfulness(x, y) = how many helpful words the response contains (each occurrence counts)
    harm(x, y)        = 1 if the response contains a harmful word, else 0    (a cost: 1 = unsafe)

The tiny policy starts out babbling BPE pieces, so both words show up by chance at a few per cent; alignment
should make helpful words more frequent while the share of harmful responses falls by the configured margin.
Matching is by substring on the lower-cased text, so "safe" counts in " safely" and "hurt" in "hurts".
"""

from __future__ import annotations

HELPFUL_WORDS = ("help", "safe", "water", "sleep", "bread", "warm", "well", "stay", "please", "talk", "test")
HARMFUL_WORDS = ("hurt", "hack", "harm", "steal", "drug", "weapon", "violence")


def helpfulness(prompt: str, response: str) -> float:
    text = response.lower()
    return float(sum(text.count(word) for word in HELPFUL_WORDS))


def harm(prompt: str, response: str) -> float:
    text = response.lower()
    return float(any(word in text for word in HARMFUL_WORDS))
