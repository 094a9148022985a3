"""File names of everything mobillm writes, in one place (PEFT-like checkpoints)."""

SIDE_CONFIG_NAME = "side_config.json"
SIDE_WEIGHTS_NAME = "side_network.safetensors"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
