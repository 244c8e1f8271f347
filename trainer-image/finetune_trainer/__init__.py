"""The trainer that runs in every FineTuneJob pod: SFTTrainer + LoRA with crash-safe checkpoints."""
