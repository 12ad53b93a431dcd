"""Parameter-efficient finetuning: adapters applied to the frozen decoder weights."""
