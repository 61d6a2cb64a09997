"""A softmax (multinomial logistic regression) classifier over sentence embeddings, trained on labelled
examples at load time.

Nearest-example matching (:class:`service_kit.semantic_match.SemanticMatcher`) asks how close a message is
to one example; a linear probe learns which directions of the embedding space separate the labels from each
other and from the near misses, so a paraphrase that is near no single example but clearly on one side of
the boundary is still recognised. Training is deterministic (full-batch gradient descent from zero, fixed
steps) and takes well under a second for a few hundred examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

# L2 strength is 1 / REGULARISATION_C per example; with STEPS of LEARNING_RATE the loss has converged on
# the shipped examples (agent_service/escalation_examples.yaml: ~270 examples, 8 labels).
REGULARISATION_C: Final[float] = 30.0
STEPS: Final[int] = 1500
LEARNING_RATE: Final[float] = 8.0


@dataclass(frozen=True)
class LinearProbe:
    labels: tuple[str, ...]
    weights: npt.NDArray[np.float32]  # dimensions x labels
    bias: npt.NDArray[np.float32]  # labels

    @classmethod
    def train(cls, vectors: npt.NDArray[np.float32], labels: Sequence[str]) -> LinearProbe:
        """Fits the probe to `vectors` (one row per example, unit length) and their `labels`."""
        names = tuple(dict.fromkeys(labels))
        targets = np.eye(len(names), dtype=np.float64)[[names.index(label) for label in labels]]
        x = vectors.astype(np.float64)
        count = len(x)
        weights = np.zeros((x.shape[1], len(names)))
        bias = np.zeros(len(names))
        for _ in range(STEPS):
            gradient = _softmax(x @ weights + bias) - targets
            weights -= LEARNING_RATE * (x.T @ gradient / count + weights / (REGULARISATION_C * count))
            bias -= LEARNING_RATE * gradient.mean(axis=0)
        return cls(names, weights.astype(np.float32), bias.astype(np.float32))

    def probabilities(self, vector: npt.NDArray[np.float32]) -> dict[str, float]:
        """Label -> probability for one vector."""
        row = _softmax((vector @ self.weights + self.bias)[np.newaxis, :].astype(np.float64))[0]
        return {label: float(value) for label, value in zip(self.labels, row, strict=True)}


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
    return result
