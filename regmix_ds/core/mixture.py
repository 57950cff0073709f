"""The mixture value type: domain weights keyed by name, validated once, trusted downstream; and priors."""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, read_mapping, write_json_atomic
from regmix_ds.core.names import check_safe_name

SUM_TOLERANCE = 1e-6
MAX_WEIGHT = 1e18
"""Largest weight or prior value taken: shares, or token counts of any real corpus (< 1e15),
fit; anything near float's limit (1e308) would overflow the sums every stage takes."""


@dataclass(frozen=True)
class Mixture:
    """Non-negative, finite weights over named domains that sum to 1.

    Build it with `Mixture.from_weights` (or `load`): the constructor is the only place that
    checks, so every Mixture in the program is valid. Domain order is kept as given.
    """

    weights: Mapping[str, float]
    source: str = field(default="mixture", compare=False)

    def __post_init__(self) -> None:
        weights = _validated(self.weights, self.source)
        total = math.fsum(weights.values())
        if abs(total - 1.0) > SUM_TOLERANCE:
            raise RegmixError(self.source, f"weights sum to {total:.9g}, not 1: scale them to sum to 1")
        object.__setattr__(self, "weights", MappingProxyType(weights))

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, Any], *, renormalize: bool = False, source: object = "mixture"
    ) -> Mixture:
        """Validate `weights`; rescale them to sum 1 only when the caller asks for it."""
        clean = _validated(weights, source)
        if renormalize:
            total = math.fsum(clean.values())
            clean = {name: w / total for name, w in clean.items()}
        return cls(clean, source=str(source))

    @classmethod
    def load(cls, path: str | os.PathLike, *, renormalize: bool = False) -> Mixture:
        """Read a mixture file: `{"weights": {"<domain>": w, ...}, ...free metadata}`."""
        return cls.load_with_metadata(path, renormalize=renormalize)[0]

    @classmethod
    def load_with_metadata(cls, path: str | os.PathLike, *, renormalize: bool = False) -> tuple[Mixture, dict]:
        """A mixture file's mixture and the rest of its fields (a swarm member's `index`, `round`, ...)."""
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("weights"), dict):
            raise RegmixError(path, 'expected a JSON object with a "weights" mapping')
        mixture = cls.from_weights(data["weights"], renormalize=renormalize, source=path)
        return mixture, {key: value for key, value in data.items() if key != "weights"}

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def content_hash(self) -> str:
        """A stable hash of the weights alone (name order and metadata do not change it)."""
        canonical = json.dumps({k: float(v) for k, v in sorted(self.weights.items())}, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def check_domains(self, known: Iterable[str], where: object) -> None:
        """Every manifest domain must be named, and no unknown name may appear."""
        known = list(known)
        unknown = sorted(set(self.weights) - set(known))
        missing = [name for name in known if name not in self.weights]
        if unknown:
            raise RegmixError(where, f"mixture names unknown domain(s) {', '.join(unknown)}")
        if missing:
            raise RegmixError(where, f"mixture lacks domain(s) {', '.join(missing)}")

    def vector(self, domains: Iterable[str]) -> np.ndarray:
        """The weights as a float64 array in the order of `domains` (absent names are 0)."""
        return np.array([self.weights.get(name, 0.0) for name in domains], dtype=np.float64)

    def to_json(self, **metadata: Any) -> dict:
        """The mixture file's content: weights, their content hash, then `metadata`."""
        return {"weights": dict(self.weights), "hash": self.content_hash(), **metadata}

    def save(self, path: str | os.PathLike, **metadata: Any) -> None:
        """Write `to_json(**metadata)` to `path` atomically."""
        write_json_atomic(path, self.to_json(**metadata))


def _validated(weights: Mapping[str, Any], source: object) -> dict[str, float]:
    if not isinstance(weights, Mapping) or not weights:
        raise RegmixError(source, "mixture has no weights")
    clean: dict[str, float] = {}
    for name, value in weights.items():
        check_safe_name(name, source, "domain name")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise RegmixError(source, f"weight of {name!r} is not a number: {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise RegmixError(source, f"weight of {name!r} is not finite: {value}")
        if value < 0:
            raise RegmixError(source, f"weight of {name!r} is negative: {value}")
        if value > MAX_WEIGHT:
            raise RegmixError(source, f"weight of {name!r} is {value:g}, above {MAX_WEIGHT:g}: "
                                      "give shares or token counts")
        clean[name] = value
    if not any(w > 0 for w in clean.values()):
        raise RegmixError(source, "all weights are zero")
    return clean


def read_prior(path: str | os.PathLike) -> dict[str, float]:
    """The one reader of prior files (YAML or JSON): domain -> share, names and shares as written.

    A flat mapping, or one under `train:` (RegMix's `token_prior.yaml`). Shares must be finite
    and non-negative, not all zero; callers renormalise, and a stage that samples around the
    prior refuses zero shares itself. A swarm keeps the names as written (RegMix's own column
    names); matching against result tables maps them by the name rule
    (`regress.tables.prior_by_domain`).
    """
    data = read_mapping(path)
    if isinstance(data.get("train"), Mapping):
        data = data["train"]
    prior: dict[str, float] = {}
    for key, value in data.items():
        name = check_safe_name(key, path, "domain name")
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or not 0 <= value <= MAX_WEIGHT):
            raise RegmixError(path, f"prior of {key!r} must be a number in [0, {MAX_WEIGHT:g}], got {value!r}")
        prior[name] = float(value)
    if not prior or math.fsum(prior.values()) <= 0:
        raise RegmixError(path, "prior is empty or all zero")
    return prior
