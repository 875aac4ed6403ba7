"""Training pieces shared by every stage: optimizer (optim), pure steps (lm_step), mesh/sharding (sharding)."""
