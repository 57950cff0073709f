"""Result tables in, one shape out: RegMix's CSV pairs and our own `results.csv`.

Two layouts are read:

* RegMix's: a mixtures CSV (`index` + one weight column per domain) and a losses CSV
  (`index` + one loss column per validation set), joined on `index`.
* ours (`regmix-ds collect`): one `results.csv` with `index`, `status`, `w:<domain>` weight
  columns, `loss:<name>` loss columns, `tokens`, `wall_seconds`; rows whose status is not
  `done` are skipped.

Weight rows are renormalised to sum to 1 (RegMix rounds them to 3 decimals).

Column names map to domain and loss names by the rule of `regmix_ds.core.names`.
A `--target` term may name a loss by its short name or by its full column name.
"""
from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import file_hash
from regmix_ds.core.mixture import MAX_WEIGHT, read_prior
from regmix_ds.core.names import LOSS_PREFIX, WEIGHT_PREFIX, check_safe_name, loss_name, weight_name
from regmix_ds.core.settings import parse_pairs

INDEX = "index"
SHOWN = 5
"""How many offending row indices an error message lists."""


def domain_mismatch(expected: Sequence[str], given: Iterable[str]) -> str:
    """'' when `given` names exactly the `expected` domains, else what is missing and unknown."""
    given = list(given)
    missing = [d for d in expected if d not in given]
    unknown = [d for d in given if d not in expected]
    parts = [f"missing {', '.join(missing)}" if missing else "", f"unknown {', '.join(unknown)}" if unknown else ""]
    return "; ".join(p for p in parts if p)


@dataclass(frozen=True)
class WeightTable:
    """Mixtures, one row per run: `weights[i]` is run `index[i]`, columns in `domains` order."""

    index: tuple[str, ...]
    domains: tuple[str, ...]
    weights: np.ndarray
    source: str

    def aligned(self, domains: Sequence[str]) -> np.ndarray:
        """The weights with columns in `domains` order; the domain sets must be equal."""
        mismatch = domain_mismatch(domains, self.domains)
        if mismatch:
            problem = f"has {len(self.domains)} domain columns, expected {len(domains)}"
            raise RegmixError(self.source, f"{problem} ({mismatch})")
        return self.weights[:, [self.domains.index(d) for d in domains]]


@dataclass(frozen=True)
class RunTable:
    """Proxy runs: their mixtures and their measured losses, joined row by row."""

    mixtures: WeightTable
    losses: Mapping[str, np.ndarray]
    """Loss name (short, by the name rule) -> one value per run (NaN where a cell was empty)."""
    loss_columns: Mapping[str, str]
    """Loss name -> the column it was read from."""
    loss_source: str
    inputs: Mapping[str, Mapping[str, str]]
    """Role ("mixtures", "losses" or "results") -> {"path": absolute path, "sha256": hash}."""

    @property
    def index(self) -> tuple[str, ...]:
        return self.mixtures.index

    @property
    def domains(self) -> tuple[str, ...]:
        return self.mixtures.domains

    @property
    def weights(self) -> np.ndarray:
        return self.mixtures.weights

    def subset(self, rows: np.ndarray) -> RunTable:
        """The runs at positions `rows` (repeats allowed: a bootstrap resample)."""
        mixtures = WeightTable(
            tuple(self.index[i] for i in rows), self.domains, self.weights[rows], self.mixtures.source
        )
        losses = {name: values[rows] for name, values in self.losses.items()}
        return RunTable(mixtures, losses, self.loss_columns, self.loss_source, self.inputs)


def _read_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise RegmixError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RegmixError(path, f"cannot read as CSV ({err})") from None
    rows = [row for row in rows if row]
    if not rows:
        raise RegmixError(path, "empty file")
    header = [cell.strip() for cell in rows[0]]
    if INDEX not in header:
        raise RegmixError(path, f"no {INDEX!r} column")
    if len(set(header)) != len(header):
        raise RegmixError(path, "duplicate column names")
    body = rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise RegmixError(path, f"line {number} has {len(row)} cells, the header has {len(header)}")
    if not body:
        raise RegmixError(path, "no data rows")
    return header, body


MAX_CELL = MAX_WEIGHT
"""The largest magnitude a weight or loss cell may hold: the bound a mixture's weights have, for
the same reason (sums and squares over a whole table stay finite)."""


def _number(cell: str, path: object, where: str) -> float:
    text = cell.strip()
    if not text:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise RegmixError(path, f"{where}: not a number: {cell!r}") from None
    if abs(value) > MAX_CELL:  # NaN and inf pass here: the weight and loss checks name them as missing or not finite
        raise RegmixError(path, f"{where}: {text} is beyond +-{MAX_CELL:g}, not a weight or a loss")
    return value


def _index_column(header: list[str], body: list[list[str]], path: object) -> tuple[str, ...]:
    column = header.index(INDEX)
    index = tuple(row[column].strip() for row in body)
    repeated = [i for i, count in Counter(index).items() if count > 1]
    if repeated:
        raise RegmixError(path, f"index {', '.join(repeated[:SHOWN])} appears more than once")
    if "" in index:
        raise RegmixError(path, "a row has an empty index")
    return index


def _columns(header: list[str], names: list[str], rename, path: object, what: str) -> dict[str, str]:
    """Short name -> column, after checking the names are safe and do not collide."""
    mapping: dict[str, str] = {}
    for column in names:
        short = rename(column)
        check_safe_name(short, path, f"{what} name (from column {column!r})")
        if short in mapping:
            raise RegmixError(path, f"columns {mapping[short]!r} and {column!r} both mean {what} {short!r}")
        mapping[short] = column
    if not mapping:
        raise RegmixError(path, f"no {what} columns")
    return mapping


def _weights(header, body, columns: Mapping[str, str], index, path) -> np.ndarray:
    positions = [header.index(column) for column in columns.values()]
    weights = np.array(
        [[_number(row[p], path, f"index {i}, column {header[p]!r}") for p in positions] for row, i in zip(body, index)],
        dtype=np.float64,
    )
    bad = ~np.isfinite(weights).all(axis=1)
    if bad.any():
        raise RegmixError(path, f"index {_listed(index, bad)}: weight missing or not finite")
    negative = (weights < 0).any(axis=1)
    if negative.any():
        raise RegmixError(path, f"index {_listed(index, negative)}: negative weight")
    totals = weights.sum(axis=1, keepdims=True)
    if (totals[:, 0] <= 0).any():
        raise RegmixError(path, f"index {_listed(index, totals[:, 0] <= 0)}: all weights are zero")
    return weights / totals


def _listed(index: Sequence[str], mask: np.ndarray) -> str:
    hits = [index[i] for i in np.flatnonzero(mask)]
    more = f" (+{len(hits) - SHOWN} more)" if len(hits) > SHOWN else ""
    return ", ".join(hits[:SHOWN]) + more


def _weight_columns(header: list[str]) -> list[str]:
    ours = [c for c in header if c.startswith(WEIGHT_PREFIX)]
    return ours or [c for c in header if c != INDEX]


def read_weights(path: str | os.PathLike) -> WeightTable:
    """A mixtures CSV in RegMix's layout (every non-index column a domain) or ours (`w:` columns)."""
    header, body = _read_csv(path)
    index = _index_column(header, body, path)
    columns = _columns(header, _weight_columns(header), weight_name, path, "domain")
    return WeightTable(index, tuple(columns), _weights(header, body, columns, index, path), str(path))


def _losses(header, body, names: list[str], index, path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    columns = _columns(header, names, loss_name, path, "loss")
    losses = {}
    for short, column in columns.items():
        p = header.index(column)
        losses[short] = np.array([_number(row[p], path, f"index {i}, column {column!r}")
                                  for row, i in zip(body, index)])
    return losses, columns


def _provenance(**paths: str | os.PathLike) -> dict[str, dict[str, str]]:
    return {role: {"path": str(Path(p).resolve()), "sha256": file_hash(p)} for role, p in paths.items()}


def read_regmix_tables(mixtures: str | os.PathLike, losses: str | os.PathLike) -> RunTable:
    """RegMix's pair of CSVs joined on `index`; every mixture row needs a loss row and back."""
    weights = read_weights(mixtures)
    header, body = _read_csv(losses)
    loss_index = _index_column(header, body, losses)
    unmatched_loss = sorted(set(loss_index) - set(weights.index))
    unmatched_mix = sorted(set(weights.index) - set(loss_index))
    if unmatched_loss or unmatched_mix:
        parts = []
        if unmatched_mix:
            parts.append(f"index {', '.join(unmatched_mix[:SHOWN])} of {mixtures} has no loss row")
        if unmatched_loss:
            parts.append(f"index {', '.join(unmatched_loss[:SHOWN])} has no row in {mixtures}")
        raise RegmixError(losses, "; ".join(parts))
    order = [loss_index.index(i) for i in weights.index]
    body = [body[i] for i in order]
    values, columns = _losses(header, body, [c for c in header if c != INDEX], weights.index, losses)
    return RunTable(weights, values, columns, str(losses), _provenance(mixtures=mixtures, losses=losses))


def read_results(path: str | os.PathLike) -> RunTable:
    """Our `results.csv`: `w:` weights and `loss:` losses of the runs whose status is `done`."""
    header, body = _read_csv(path)
    if "status" not in header:
        raise RegmixError(path, "no 'status' column (is this a regmix-ds results.csv?)")
    if not any(c.startswith(WEIGHT_PREFIX) for c in header):
        raise RegmixError(path, f"no weight columns ({WEIGHT_PREFIX}<domain>)")
    status = header.index("status")
    body = [row for row in body if row[status].strip() == "done"]
    if not body:
        raise RegmixError(path, "no run has status 'done'")
    index = _index_column(header, body, path)
    columns = _columns(header, _weight_columns(header), weight_name, path, "domain")
    weights = WeightTable(index, tuple(columns), _weights(header, body, columns, index, path), str(path))
    loss_columns = [c for c in header if c.startswith(LOSS_PREFIX)]
    if not loss_columns:
        raise RegmixError(path, f"no loss columns ({LOSS_PREFIX}<name>)")
    values, names = _losses(header, body, loss_columns, index, path)
    return RunTable(weights, values, names, str(path), _provenance(results=path))


def run_rounds(path: str | os.PathLike) -> dict[str, int]:
    """Index -> swarm round of each done run of our `results.csv` (a table from before rounds: all round 1)."""
    header, body = _read_csv(path)
    status, index = header.index("status"), header.index(INDEX)
    column = header.index("round") if "round" in header else None
    return {row[index].strip(): _round_number(row[column], path) if column is not None else 1
            for row in body if row[status].strip() == "done"}


def runs_per_round(path: str | os.PathLike) -> dict[int, int]:
    """Round -> done runs of our `results.csv`."""
    return dict(sorted(Counter(run_rounds(path).values()).items()))


def _round_number(cell: str, path: str | os.PathLike) -> int:
    if not cell.strip().isdigit() or int(cell) < 1:
        raise RegmixError(path, f"round {cell!r} is not a positive integer")
    return int(cell)


def prior_by_domain(path: str | os.PathLike) -> dict[str, float]:
    """A prior file (`core.mixture.read_prior`) keyed by domain names as the tables name them
    (`train_the_pile_unzip_pile_cc` -> `pile_cc`, like a weight column)."""
    prior: dict[str, float] = {}
    for key, share in read_prior(path).items():
        name = weight_name(key)
        if name in prior:
            raise RegmixError(path, f"two keys name the domain {name!r}")
        prior[name] = share
    return prior


@dataclass(frozen=True)
class Target:
    """What the regression predicts: one loss, or a weighted sum of several."""

    terms: tuple[tuple[str, float], ...]
    """(loss name, coefficient) pairs, loss names short by the name rule."""

    @classmethod
    def parse(cls, text: str, where: object = "--target") -> Target:
        """`pile_cc` or `pile_cc=0.7,github=0.3`; names are short or full loss column names."""
        terms = parse_pairs(text, where, default=1.0)
        for name, coefficient in terms:
            if coefficient <= 0:
                raise RegmixError(where, f"coefficient of {name!r} must be positive, got {coefficient:g}")
        return cls(tuple(terms))

    @classmethod
    def from_json(cls, data: Mapping[str, float]) -> Target:
        """The target `to_json` wrote: `{loss name: coefficient}`, terms in the mapping's order."""
        return cls(tuple((str(k), float(v)) for k, v in data.items()))

    def to_json(self) -> dict[str, float]:
        """The terms as `{loss name: coefficient}`, in order (what `from_json` reads back)."""
        return dict(self.terms)

    @property
    def label(self) -> str:
        if len(self.terms) == 1 and self.terms[0][1] == 1.0:
            return self.terms[0][0]
        return "+".join(f"{c:g}*{n}" for n, c in self.terms)

    def resolved(self, table: RunTable, where: object = "--target") -> Target:
        """The same target with every name turned into the table's short loss name."""
        by_column = {column: name for name, column in table.loss_columns.items()}
        terms = []
        for name, coefficient in self.terms:
            short = name if name in table.losses else by_column.get(name, loss_name(name))
            if short not in table.losses:
                known = ", ".join(sorted(table.losses))
                raise RegmixError(where, f"no loss column {name!r} in {table.loss_source} (known: {known})")
            terms.append((short, coefficient))
        return Target(tuple(terms))

    def values(self, table: RunTable, where: object = "--target") -> np.ndarray:
        """The target of every run in `table`; a missing (NaN) loss is an error naming the rows."""
        target = self.resolved(table, where)
        total = np.zeros(len(table.index))
        for name, coefficient in target.terms:
            column = table.losses[name]
            bad = ~np.isfinite(column)
            if bad.any():
                raise RegmixError(
                    table.loss_source,
                    f"loss {table.loss_columns[name]!r} is missing or not finite at index {_listed(table.index, bad)}",
                )
            total = total + coefficient * column
        return total
