"""Export: the chosen mixture in the form other trainers take.

`megatron`: Megatron-LM / Megatron-DeepSpeed's `--data-path` list, `weight prefix` pairs
over the domains' `<prefix>.bin/.idx` train shards from the manifest, in manifest order.
Zero-weight domains are left out (Megatron would still build their indices). Megatron
renormalises the weights itself; they are printed with full float precision.
"""
from __future__ import annotations

import os

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture

FORMATS = ("megatron",)


def megatron_data_path(mixture: Mixture, manifest: Manifest) -> list[str]:
    """`[w1, prefix1, w2, prefix2, ...]` for every domain with a positive weight."""
    mixture.check_domains(manifest.domains, mixture.source)
    pairs: list[str] = []
    for domain in manifest.domains:
        weight = mixture.weights[domain]
        prefix = str(manifest.train[domain].prefix)
        if any(c.isspace() for c in prefix):
            raise RegmixError(manifest.path,
                              f"prefix of {domain!r} contains whitespace: it cannot be one --data-path word")
        if weight > 0:
            pairs += [repr(weight), prefix]
    return pairs


def export(fmt: str, mixture_path: str | os.PathLike, manifest_path: str | os.PathLike) -> str:
    """The export text for `fmt` (one line), from a mixture file (e.g. best.json) and a manifest."""
    if fmt not in FORMATS:
        raise RegmixError("--format", f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    mixture = Mixture.load(mixture_path)
    return " ".join(megatron_data_path(mixture, Manifest.load(manifest_path)))
