"""Generation engines: the interface (base), the engines as peers (transformers, vllm, with vllm_worker run in
vLLM's own environment) and the one place they are named (registry). Import the module you need."""
