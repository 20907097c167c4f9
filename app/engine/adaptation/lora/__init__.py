"""LoRA: `config` (what an adapter is), `layer` (the wrapped projection and its training factors),
`bank` (the serving slots), `file` (`pqm-lora/1`), `peft_zip` (PEFT's form)."""
