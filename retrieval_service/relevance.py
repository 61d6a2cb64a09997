"""The relevance threshold, calibrated per knowledge base.

How close a relevant chunk is depends on the knowledge base (chunk length, writing style, how many topics an
article mixes): on the sample KB correct articles score cosine distance 0.26-0.60 and off-topic questions
0.75-0.99, but another help center put its correct articles at 0.66-0.75. A fixed constant cannot fit both.
What does carry over is how far the KB is from questions it certainly does not answer. So the service asks
the KB itself: it embeds `OFF_TOPIC_PROBES` (general knowledge, chit-chat, other trades; none a customer-
support question for any business) once per process, finds each probe's nearest chunk, and puts the threshold
`OFF_TOPIC_MARGIN` below a low quantile of those best distances. A KB whose chunks sit far from everything
(long, mixed articles) gets a higher threshold; a KB of short, focused chunks a lower one.

`OFF_TOPIC_QUANTILE`, `OFF_TOPIC_MARGIN` and the clamp were chosen on the tuning data only (the sample KB,
its suite's questions and the calibration questions in `retrieval_service.calibration`, which are NOT among
these probes); docs/retrieval.md has the numbers. The low quantile rather than the minimum lets a few probes
land near a KB that happens to cover them (a travel company's KB and "Recommend a hiking trail") without
dragging the threshold down. Operators override it with RETRIEVAL_MAX_DISTANCE or Search.max_distance.
A hit within the threshold is relevant; so is one whose chunk holds an exact term of the query, at any
distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

OFF_TOPIC_PROBES = (
    "Who painted the Mona Lisa?",
    "What is the boiling point of water at sea level?",
    "How many planets are in the solar system?",
    "Who wrote Pride and Prejudice?",
    "What is the largest ocean on Earth?",
    "When did the Second World War end?",
    "What is photosynthesis?",
    "How far is the Moon from the Earth?",
    "What is the chemical symbol for gold?",
    "Who was the first person to walk on the moon?",
    "What language is spoken in Brazil?",
    "What is the tallest animal in the world?",
    "How do volcanoes form?",
    "What causes the northern lights?",
    "Why is the sky blue?",
    "What is the square root of 144?",
    "Solve x squared minus four equals zero",
    "What is the derivative of sine?",
    "Is a tomato a fruit or a vegetable?",
    "How do I make a risotto?",
    "What is a good recipe for banana bread?",
    "How long should I boil an egg?",
    "What wine goes with salmon?",
    "Write a haiku about autumn leaves",
    "Tell me a bedtime story about a dragon",
    "Compose a limerick about a cat",
    "What rhymes with orange?",
    "Who is the best footballer of all time?",
    "What are the rules of cricket?",
    "How many players are on a basketball team?",
    "When are the next Olympic Games?",
    "How do I write a for loop in Python?",
    "What is a binary search tree?",
    "Explain recursion to a five year old",
    "What is the difference between TCP and UDP?",
    "How do I center a div in CSS?",
    "What are the symptoms of the flu?",
    "How many hours of sleep does an adult need?",
    "What is a healthy resting heart rate?",
    "How do I train my puppy to sit?",
    "What do hedgehogs eat?",
    "How often should I water a cactus?",
    "What is the population of Australia?",
    "Which river is the longest in Africa?",
    "What is the capital of Canada?",
    "Who was Napoleon Bonaparte?",
    "What happened at the fall of the Berlin Wall?",
    "What is the theory of relativity?",
    "What are black holes made of?",
    "Do you believe in ghosts?",
    "What is your favourite colour?",
    "Are you conscious?",
    "Let's play rock paper scissors",
    "Summarise the plot of Hamlet",
    "Who directed the film Jaws?",
    "What chords are in a blues progression?",
    "How do I tune a guitar?",
    "What is the stock market?",
    "What is the speed of light?",
    "How do bees make honey?",
)
# Chosen on the tuning data (docs/retrieval.md, "The relevance threshold").
OFF_TOPIC_QUANTILE = 0.05
OFF_TOPIC_MARGIN = 0.10
MIN_THRESHOLD = 0.45
MAX_THRESHOLD = 0.90
# Until the KB has this many chunks the probes say little about it: use the fallback.
MIN_CHUNKS = 3
FALLBACK_THRESHOLD = 0.65

SOURCE_CALIBRATED = "calibrated"
SOURCE_CONFIGURED = "configured"
SOURCE_REQUEST = "request"
SOURCE_FALLBACK = "fallback"


@dataclass(frozen=True)
class Threshold:
    """The threshold a search applies and where it came from (`source`: calibrated, configured, request,
    fallback); `off_topic_quantile` is the probes' low-quantile best distance it was derived from."""

    max_distance: float
    source: str
    off_topic_quantile: float | None = None


def quantile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def calibrated_threshold(off_topic_best: Sequence[float], chunks: int) -> Threshold:
    """The KB's threshold from the best-hit distances of the off-topic probes (see the module docstring)."""
    if chunks < MIN_CHUNKS or not off_topic_best:
        return Threshold(FALLBACK_THRESHOLD, SOURCE_FALLBACK)
    low = quantile(off_topic_best, OFF_TOPIC_QUANTILE)
    value = min(MAX_THRESHOLD, max(MIN_THRESHOLD, low - OFF_TOPIC_MARGIN))
    return Threshold(round(value, 4), SOURCE_CALIBRATED, round(low, 4))


# In the calibrated mode a hit whose chunk contains an exact term of the query (a code-like term such as an
# order number or SKU, or a term rare in the KB and in the language such as a product name, acronym or error
# number; retrieval_service.lexical_index) is relevant at any distance.


def is_relevant(distance: float, threshold: Threshold, *, exact_terms: Sequence[str]) -> bool:
    """Whether a hit survives `threshold`: within its distance, or (calibrated or fallback) carrying an exact
    term of the query. A configured or requested threshold is a plain distance cut-off."""
    if threshold.source in (SOURCE_CALIBRATED, SOURCE_FALLBACK) and exact_terms:
        return True
    return distance <= threshold.max_distance
