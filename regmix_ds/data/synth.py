"""A synthetic corpus whose target composition is known, and whose best mixture can be measured.

Each domain is a seeded Markov chain over its own lexicon: words built from the domain's own
letters, plus some words from a pool every domain shares (with domain-specific successors,
so a shared word alone does not say which domain you are in). Domains differ in lexicon
size, how predictable the next word is (branching and skew), document and sentence length,
how often a sentence repeats, and layout (prose, code, dialogue, arithmetic, lists, verse).

The target set is drawn from the same generators (fresh documents) in known proportions,
by characters, over a few domains: `target_composition.json`. That composition is what the
target is made of, not the best mixture to train on for it: with learning curves that flatten
(per-domain loss L_i(n) ~ c_i + a_i n^-alpha), minimising sum_i p_i L_i(w_i T) puts
w_i proportional to (p_i a_i)^(1/(1+alpha)), flatter than p, and what the domains share moves
it further (at the demo's proxy scale the chosen mixture beats the composition itself). The
best mixture at proxy scale is measured instead, by an oracle search
(`benchmarks/oracle.py`, which writes `oracle.json` beside the corpus; `regmix-ds verify
--oracle` reports the chosen mixture's regret against it).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import atomic_output, write_text_atomic
from regmix_ds.core.mixture import Mixture

TARGET_NAME = "target"
SHARED_POOL_SIZE = 150
LINE_LAYOUTS = {"title", "code", "dialog", "numbers", "list", "verse"}


@dataclass(frozen=True)
class DomainStyle:
    """The statistics of one synthetic domain."""

    name: str
    own_words: int
    """Words only this domain uses."""
    shared_words: int
    """Words taken from the pool all domains share."""
    branching: int
    """Possible successors of each word: low is predictable, high is entropic."""
    skew: float
    """Zipf exponent over those successors."""
    doc_words: int
    """Mean document length in words (gamma distributed)."""
    sentence_words: tuple[int, int]
    """Range of words per sentence (or line)."""
    repeat: float
    """Chance that a sentence repeats an earlier one of the same document."""
    consonants: str
    vowels: str
    layout: str
    """prose | title | code | dialog | numbers | list | verse."""


# The default target's components (news, code, chat) get complexity (words x branching) in
# proportion to their target weights 0.6/0.3/0.1 and the same skew, so the composition is a
# sensible reference; it is still not the best training mixture (see the module docstring).
# The other domains vary freely.
STYLES = (
    DomainStyle("news", 900, 120, 8, 1.0, 140, (8, 20), 0.02, "tnrslcdm", "aeio", "prose"),
    DomainStyle("code", 600, 40, 6, 1.0, 180, (3, 9), 0.05, "pqxzkbt", "aeu", "code"),
    DomainStyle("chat", 240, 40, 5, 1.0, 50, (3, 10), 0.05, "hjwyngl", "aoiu", "dialog"),
    DomainStyle("wiki", 1600, 120, 12, 1.0, 260, (10, 25), 0.01, "bcdfgmnprst", "aeiouy", "prose"),
    DomainStyle("math", 120, 20, 4, 1.2, 90, (5, 12), 0.10, "", "", "numbers"),
    DomainStyle("legal", 500, 80, 2, 1.5, 320, (15, 30), 0.20, "rstvlf", "aei", "title"),
    DomainStyle("recipes", 350, 60, 5, 1.1, 110, (4, 9), 0.05, "kmpsz", "aoe", "list"),
    DomainStyle("poetry", 700, 100, 6, 0.8, 70, (4, 7), 0.30, "lmnrvw", "aeiou", "verse"),
)
DEFAULT_TARGET = {"news": 0.6, "code": 0.3, "chat": 0.1}
COMPOSITION = "target_composition.json"
"""The target set's known composition (by characters): a reference point, not the best training mixture."""

# The whole loop on 2 CPU cores in minutes: small proxies that still tell mixtures apart on this
# corpus, and a simulation sized to the few runs a laptop can afford.
DEMO_SECTIONS = {
    "swarm": {"n": 32, "seed": 0},
    "proxy": {"preset": "demo", "seq_len": 128, "train_tokens": 65536, "warmup": 10, "lr": 0.003, "eval_batches": 8,
              "group_size": 16},
    "fit": {"target": TARGET_NAME, "folds": 4, "min_data_in_leaf": 4},
    "simulate": {"candidates": 200000, "bootstrap": 10, "top_k": 32},
    # The transfer check (launchers/demo-transfer.sh): 18 mixtures at about 8x the demo
    # proxies' parameters, as two groups of 9 for 2 cores.
    "transfer": {"preset": "proxy-1m", "group_size": 9},
}


MAX_DOCUMENTS = 1_000_000
"""Per domain and in the target set: far more than any demo or test asks for (the demo: 1,000), and
a typo like 1e9 fails at once instead of filling the disk."""


@dataclass(frozen=True)
class SynthSettings:
    """What `regmix-ds synth` generates."""

    seed: int = 0
    docs_per_domain: int = 1000
    """Documents written per domain (train and valid together)."""
    target_docs: int = 300
    """Documents in the target validation set."""
    num_domains: int = 6
    """How many of the built-in domain styles to use (the first N)."""
    target: Mapping[str, float] | None = None
    """The target's true mixture over some domains (default news 0.6, code 0.3, chat 0.1)."""
    vocab_size: int = 1024
    """Tokenizer vocabulary written into exp.yaml for `prepare --train-tokenizer`."""
    valid_documents: int = 100
    """Per-domain validation documents written into exp.yaml."""
    deepspeed_config: str | None = None
    """With a DeepSpeed config, exp.yaml also gets the demo's swarm/proxy/fit/simulate sections."""

    def __post_init__(self) -> None:
        if self.target is None:
            object.__setattr__(self, "target", dict(DEFAULT_TARGET))
        if not 0 <= self.seed < 2**63:  # numpy's seed range; it refuses the rest with a traceback
            raise RegmixError("--seed", f"a seed must be >= 0 and below 2**63, got {self.seed}")
        if max(self.docs_per_domain, self.target_docs) > MAX_DOCUMENTS:
            raise RegmixError("--docs-per-domain/--target-docs",
                              f"at most {MAX_DOCUMENTS:,} documents (a synthetic corpus is for demos and tests)")
        if not 2 <= self.num_domains <= len(STYLES):
            raise RegmixError("--num-domains", f"must be between 2 and {len(STYLES)}, got {self.num_domains}")
        if self.docs_per_domain <= self.valid_documents:
            raise RegmixError(
                "--docs-per-domain",
                f"{self.docs_per_domain} leaves no training documents after {self.valid_documents} for validation",
            )
        if self.valid_documents < 1 or self.target_docs < 1:
            raise RegmixError("--valid-documents/--target-docs", "must be >= 1")
        if self.deepspeed_config is not None and not Path(self.deepspeed_config).is_file():
            raise RegmixError("--deepspeed-config", f"{self.deepspeed_config}: file not found")
        Mixture.from_weights(self.target, renormalize=True, source="--target")
        unknown = sorted(set(self.target) - set(self.domains))
        if unknown:
            raise RegmixError("--target", f"unknown domain(s) {', '.join(unknown)}; using {', '.join(self.domains)}")

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(style.name for style in STYLES[: self.num_domains])


class DomainGenerator:
    """A seeded Markov chain over one domain's lexicon, rendered in the domain's layout."""

    def __init__(self, style: DomainStyle, shared_pool: list[str], seed: int):
        rng = _rng(seed, style.name, "language")
        self.style = style
        own = _make_words(rng, style.own_words, style.consonants, style.vowels, style.layout, exclude=set(shared_pool))
        shared = [str(word) for word in rng.choice(shared_pool, size=style.shared_words, replace=False)]
        self.lexicon = own + shared
        self.successors = rng.integers(0, len(self.lexicon), size=(len(self.lexicon), style.branching)).tolist()
        ranks = np.arange(1, style.branching + 1, dtype=np.float64) ** -style.skew
        self.rank_probs = ranks / ranks.sum()

    def documents(self, count: int, rng: np.random.Generator) -> list[str]:
        """`count` documents, drawn one after another from `rng`."""
        return [self.document(rng) for _ in range(count)]

    def document(self, rng: np.random.Generator) -> str:
        """One document: a walk of gamma-distributed length cut into sentences (some repeated), then rendered."""
        low, high = self.style.sentence_words
        length = max(low, int(rng.gamma(2.0, self.style.doc_words / 2.0)))
        words = self._walk(length, rng)
        sentences: list[list[str]] = []
        while words:
            if sentences and rng.random() < self.style.repeat:
                sentences.append(sentences[int(rng.integers(len(sentences)))])
            size = int(rng.integers(low, high + 1))
            sentences.append(words[:size])
            words = words[size:]
        return _render(sentences, self.style.layout, rng)

    def _walk(self, length: int, rng: np.random.Generator) -> list[str]:
        ranks = rng.choice(self.style.branching, size=length, p=self.rank_probs).tolist()
        current = int(rng.integers(len(self.lexicon)))
        walk = []
        for rank in ranks:
            walk.append(self.lexicon[current])
            current = self.successors[current][rank]
        return walk


def _rng(seed: int, name: str, stream: str) -> np.random.Generator:
    # Keyed by names, not positions: adding a domain never changes another domain's text.
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(stream.encode())])


def _make_words(
    rng: np.random.Generator, count: int, consonants: str, vowels: str, layout: str, exclude: set[str]
) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < count:
        word = _number(rng) if layout == "numbers" else _syllables(rng, consonants, vowels)
        if word not in exclude:
            words[word] = None
    return list(words)


def _syllables(rng: np.random.Generator, consonants: str, vowels: str) -> str:
    count = int(rng.integers(1, 4))
    return "".join(consonants[rng.integers(len(consonants))] + vowels[rng.integers(len(vowels))] for _ in range(count))


def _number(rng: np.random.Generator) -> str:
    value = int(rng.integers(0, 10 ** int(rng.integers(1, 5))))
    return f"{value}.{int(rng.integers(10))}" if rng.random() < 0.2 else str(value)


def _render(sentences: list[list[str]], layout: str, rng: np.random.Generator) -> str:
    render = _LAYOUTS[layout]
    lines = [render(sentence, i, rng) for i, sentence in enumerate(sentences)]
    return ("\n" if layout in LINE_LAYOUTS else " ").join(lines)


def _prose(words: list[str], _i: int, _rng: np.random.Generator) -> str:
    return " ".join([words[0].capitalize(), *words[1:]]) + "."


def _title(words: list[str], _i: int, _rng: np.random.Generator) -> str:
    return " ".join(word.capitalize() for word in words) + ";"


def _code(words: list[str], _i: int, _rng: np.random.Generator) -> str:
    head, *args = words
    call = f"{args[0]}({', '.join(args[1:])})" if args else "None"
    return f"    {head} = {call}"


def _dialog(words: list[str], i: int, rng: np.random.Generator) -> str:
    return f"{'AB'[i % 2]}: {' '.join(words)}{'?' if rng.random() < 0.3 else '.'}"


def _numbers(words: list[str], _i: int, rng: np.random.Generator) -> str:
    operators = rng.choice(list("+-*/"), size=max(len(words) - 2, 0)).tolist()
    terms = [part for pair in zip(words[:-1], [*operators, "="]) for part in pair]
    return " ".join([*terms, words[-1]])


def _list_item(words: list[str], _i: int, _rng: np.random.Generator) -> str:
    return "- " + " ".join(words)


def _verse(words: list[str], i: int, _rng: np.random.Generator) -> str:
    return " ".join(words) + (",\n" if i % 4 == 3 else ",")


_LAYOUTS = {
    "prose": _prose,
    "title": _title,
    "code": _code,
    "dialog": _dialog,
    "numbers": _numbers,
    "list": _list_item,
    "verse": _verse,
}


def target_documents(
    generators: Mapping[str, DomainGenerator], weights: Mapping[str, float], count: int, seed: int
) -> tuple[list[str], dict[str, int]]:
    """`count` fresh documents whose characters follow `weights` as closely as whole documents allow.

    Each next document comes from the domain furthest below its share of the characters so
    far, so the realised shares stay within one document of the weights at every prefix.
    """
    names = list(weights)
    share = np.array([weights[name] for name in names])
    rngs = {name: _rng(seed, name, "target") for name in names}
    chars = np.zeros(len(names))
    documents = []
    for _ in range(count):
        name = names[int(np.argmax(share * max(chars.sum(), 1.0) - chars))]
        document = generators[name].document(rngs[name])
        chars[names.index(name)] += len(document)
        documents.append(document)
    return documents, {name: int(c) for name, c in zip(names, chars)}


def build_generators(settings: SynthSettings) -> dict[str, DomainGenerator]:
    """The generator of every domain in use, all drawing shared words from one seeded pool."""
    shared_pool = _make_words(_rng(settings.seed, "shared", "language"), SHARED_POOL_SIZE, "bdfgklmnprstv", "aeiou",
                              "prose", set())
    return {style.name: DomainGenerator(style, shared_pool, settings.seed) for style in STYLES[: settings.num_domains]}


def synthesize(out_dir: Path, settings: SynthSettings) -> dict[str, Path]:
    """Write every domain's jsonl, the target set, `target_composition.json` and a ready `exp.yaml` into `out_dir`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RegmixError(out_dir, "exists and is not a directory")
    target = Mixture.from_weights(settings.target, renormalize=True, source="--target")
    generators = build_generators(settings)
    written = {}
    for name, generator in generators.items():
        documents = generator.documents(settings.docs_per_domain, _rng(settings.seed, name, "train"))
        written[name] = _write_jsonl(out_dir / f"{name}.jsonl", documents)
    documents, chars = target_documents(generators, target.weights, settings.target_docs, settings.seed)
    written[TARGET_NAME] = _write_jsonl(out_dir / f"{TARGET_NAME}.jsonl", documents)
    written["composition"] = _write_composition(out_dir / COMPOSITION, target, settings.domains, chars)
    written["config"] = _write_config(out_dir / "exp.yaml", settings)
    return written


def _write_jsonl(path: Path, documents: list[str]) -> Path:
    with atomic_output(path) as handle:
        for document in documents:
            handle.write(json.dumps({"text": document}) + "\n")
    return path


def _write_composition(path: Path, target: Mixture, domains: tuple[str, ...], chars: Mapping[str, int]) -> Path:
    weights = {name: target.weights.get(name, 0.0) for name in domains}
    total = sum(chars.values())
    Mixture.from_weights(weights, source=path).save(
        path,
        target=TARGET_NAME,
        measure="share of the target set's characters",
        realized={name: chars.get(name, 0) / total for name in domains},
    )
    return path


def _write_config(path: Path, settings: SynthSettings) -> Path:
    config = {
        "work_dir": "work",
        "data": {
            "tokenizer": "work/tokenizer",
            "vocab_size": settings.vocab_size,
            "valid_documents": settings.valid_documents,
            "seed": settings.seed,
            "domains": {name: {"paths": [f"{name}.jsonl"]} for name in settings.domains},
            "targets": {TARGET_NAME: {"paths": [f"{TARGET_NAME}.jsonl"]}},
        },
    }
    if settings.deepspeed_config is not None:
        # A copy beside exp.yaml: the experiment directory refers to nothing outside it.
        copy = path.parent / Path(settings.deepspeed_config).name
        write_text_atomic(copy, Path(settings.deepspeed_config).read_text(encoding="utf-8"))
        config |= {**DEMO_SECTIONS, "proxy": {"deepspeed_config": copy.name, **DEMO_SECTIONS["proxy"]}}
    header = (f"# Written by `regmix-ds synth --seed {settings.seed}`; what the target set is made of is in "
              f"{COMPOSITION}.\n")
    write_text_atomic(path, header + yaml.safe_dump(config, sort_keys=False))
    return path
