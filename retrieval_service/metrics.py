"""The retrieval service's Prometheus series: how close the chunks a search returns are."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import Counter, Histogram

# Cosine distance lies in [0, 2]; the interesting part is below ~1.
DISTANCE_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)

RETRIEVAL_DISTANCE = Histogram(
    "support_retrieval_distance",
    "Cosine distance of each chunk returned by a search (lower is more similar).",
    buckets=DISTANCE_BUCKETS,
)
RETRIEVAL_EMPTY = Counter(
    "support_retrieval_empty_total",
    "Searches that returned no chunk within the relevance threshold.",
)


def observe_retrieval_distances(distances: Iterable[float]) -> None:
    """The distances of the chunks one search returned (before or after the threshold, as the caller decides);
    an empty result counts in `support_retrieval_empty_total`."""
    seen = False
    for distance in distances:
        RETRIEVAL_DISTANCE.observe(distance)
        seen = True
    if not seen:
        RETRIEVAL_EMPTY.inc()
