"""Tailor x Flower: federated LoRA fine-tuning of the on-device adapter (test harness)."""
