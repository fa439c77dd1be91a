"""Pretraining and fine-tuning with Accelerate (`pemt pretrain`, `pemt finetune`, or `accelerate launch -m`)."""
