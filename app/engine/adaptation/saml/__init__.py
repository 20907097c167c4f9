"""SAML (speaker-adaptive mixture of LoRA experts, Zhao et al., Interspeech 2024): `config` (what
an adapter is), `router` (the per-utterance mixture), `weights` (an adapter or bank in memory),
`layer` (the wrapped projection for training), `routing` (serving: a request's mixed factors),
`file` (`pqm-saml/1`)."""
