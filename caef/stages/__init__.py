"""Pipeline stages: LightningModules for the trainable ones, batched functions for the offline ones."""
