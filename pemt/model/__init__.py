"""The PEMT model family: configuration, modules, inputs and pipeline. This package is what a Hub repository's remote
code holds, so nothing here imports from the rest of `pemt` (data, training, CLI, publishing)."""
