"""The core every stage shares: errors, atomic files, settings, mixtures, the manifest, the work-dir
layout and the DeepSpeed-config schema. It imports no other regmix_ds package."""
