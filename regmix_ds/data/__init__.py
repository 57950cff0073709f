"""The corpus: tokenizers, Megatron token shards, the blended sampler, the synthetic demo corpus,
`prepare` (raw text -> shards + manifest) and the Megatron hand-off (`export`). Imports `core` only."""
